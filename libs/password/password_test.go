package password

import (
	"errors"
	"strings"
	"testing"
)

func TestHashVerify(t *testing.T) {
	t.Parallel()
	h, err := Hash("S3cret-pass")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$") || strings.Contains(h, "S3cret") {
		t.Fatalf("unexpected hash %q", h)
	}
	if err := Verify("S3cret-pass", h); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if err := Verify("wrong", h); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong password: %v", err)
	}
	h2, _ := Hash("S3cret-pass")
	if h == h2 {
		t.Fatal("two hashes of one password are equal: salt not random")
	}
	if err := Verify("x", "plain"); err == nil || errors.Is(err, ErrMismatch) {
		t.Fatalf("malformed hash: %v", err)
	}
}
