package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/model/torch"
)

// TestJoinCUDAOnCPUBuildFailsAtOnce runs the real node binary: `node join
// --device cuda:0` on a build whose libtorch sees no CUDA device must exit 1
// with an error naming the device and the fix, before it tries to reach the
// coordinator (which here does not exist and would make it wait for
// --join-timeout, longer than this test's deadline).
func TestJoinCUDAOnCPUBuildFailsAtOnce(t *testing.T) {
	if n := torch.CUDADeviceCount(); n > 0 {
		t.Skipf("this host has %d CUDA device(s); the check is for CPU builds", n)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "node")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/node: %v\n%s", err, out)
	}
	key := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(key, make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "join", "--coordinator", "127.0.0.1:9", "--key-file", key,
		"--bind", "127.0.0.1:0", "--device", "cuda:0", "--join-timeout", "1h")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("node join --device cuda:0 did not fail before joining:\n%s", out)
	}
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("want exit status 1, got %v:\n%s", err, out)
	}
	for _, want := range []string{"--device", "cuda:0", "no CUDA device", "--device cpu", "scripts/setup.sh --libtorch"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
}
