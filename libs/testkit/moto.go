package testkit

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/flotilla/libs/awsx"
)

// Moto is a moto_server: the AWS wire protocols (EC2, EBS, KMS, Secrets
// Manager, Route53, STS, IAM) on 127.0.0.1, for the code that calls AWS.
type Moto struct {
	// URL is the endpoint to point the SDK at (awsx.Account.EndpointURL).
	URL  string
	stop func()
}

// Stop kills the server, as an account gone or unreachable looks: every
// call after it is refused a connection.
func (m *Moto) Stop() { m.stop() }

// MotoAuth makes moto check every request's signature and access key, as
// AWS does (by default it accepts any): with it, Account's keys are refused.
const MotoAuth = "INITIAL_NO_AUTH_ACTION_COUNT=0"

// MotoRegion is the region tests use; moto serves every region.
const MotoRegion = "eu-west-1"

// StartMoto starts a moto_server of the test's own, with AMI validation on
// (an unknown image fails as on AWS), and stops it when the test ends. A
// missing moto_server fails the test, never skips it: CI must run these
// tests. env adds moto's settings ("NAME=value"), e.g. MotoAuth.
func StartMoto(tb testing.TB, env ...string) *Moto {
	tb.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		tb.Fatal("testkit: moto_server is not installed (the AWS wire-protocol test server, Python package moto[server])")
	}
	port := FreePort(tb)
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	cmd.Env = append(append(os.Environ(), "MOTO_ENABLE_AMI_VALIDATION=true"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	killWithParent(cmd.SysProcAttr)
	out := &Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("testkit: start moto_server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := func() {
		select {
		case <-done: // reaped: its pid may be another process's now
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		<-done
	}
	tb.Cleanup(stop)
	m := &Moto{URL: fmt.Sprintf("http://127.0.0.1:%d", port), stop: stop}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			tb.Fatalf("testkit: moto_server exited: %s", out.String())
		default:
		}
		resp, err := http.Get(m.URL + "/moto-api/data.json")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("testkit: moto_server did not answer on %s within 30 s: %s", m.URL, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Account is a cloud account on this server (any keys work).
func (m *Moto) Account() awsx.Account {
	return awsx.Account{Region: MotoRegion, EndpointURL: m.URL, AccessKeyID: "AKIAFLOTILLATEST", SecretAccessKey: "flotilla-test-secret"}
}
