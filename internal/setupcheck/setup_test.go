package setupcheck

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func root(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// setup runs scripts/setup.sh with extra environment and returns its exit
// status and combined output.
func setup(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(root(t), "scripts", "setup.sh")}, args...)...)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("run setup.sh: %v", err)
	}
	return 0, string(out)
}

func TestNoLibtorchSaysWhatToInstall(t *testing.T) {
	code, out := setup(t, []string{"RINGTUNE_TORCH_INCLUDE=/nonexistent/torch.h"}, "--check", "--no-data")
	if code == 0 {
		t.Fatalf("setup --check passed without libtorch headers:\n%s", out)
	}
	for _, want := range []string{"/nonexistent/torch.h", "apt-get install", "libtorch-dev", "libopenblas0-pthread", "--libtorch DIR"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
}

func TestBadLibtorchDirIsNamed(t *testing.T) {
	dir := t.TempDir()
	code, out := setup(t, nil, "--check", "--no-data", "--libtorch", dir)
	if code == 0 {
		t.Fatalf("setup accepted an empty libtorch directory:\n%s", out)
	}
	if !strings.Contains(out, dir) || !strings.Contains(out, "libtorch_cpu.so") {
		t.Errorf("message should name %s and what is missing there:\n%s", dir, out)
	}
}

func TestUnknownOption(t *testing.T) {
	code, out := setup(t, nil, "--frobnicate")
	if code == 0 || !strings.Contains(out, "--frobnicate") || !strings.Contains(out, "--help") {
		t.Fatalf("want an error naming the option and pointing at --help, got %d:\n%s", code, out)
	}
}
