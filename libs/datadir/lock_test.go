package datadir_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"flotilla.dev/flotilla/libs/datadir"
)

func TestADataDirectoryHasOneHolder(t *testing.T) {
	t.Parallel()
	d := datadir.Dir(t.TempDir() + "/data")
	release, err := datadir.Lock(d, "flotilla up")
	if err != nil {
		t.Fatal(err)
	}
	_, err = datadir.Lock(d, "a flotilla admin command")
	if !errors.Is(err, datadir.ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d, flotilla up holds %s", os.Getpid(), d)) {
		t.Fatalf("a second holder: %v; want ErrInUse naming the first", err)
	}
	release()
	release2, err := datadir.Lock(d, "a flotilla admin command")
	if err != nil {
		t.Fatalf("once released: %v", err)
	}
	release2()
}
