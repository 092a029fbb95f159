package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckCUDA(t *testing.T) {
	libs := []string{"/opt/torch/lib/libtorch_cuda.so"}
	cases := []struct {
		name    string
		want    bool
		libs    []string
		devices int
		errHas  []string // empty: no error
	}{
		{"cpu build", false, nil, 0, nil},
		{"cpu build, cuda wanted", true, nil, 0, []string{"not loaded", "--libtorch"}},
		{"cuda build without a device", false, libs, 0, []string{"no CUDA device", "libtorch_cuda.so", "nvidia-smi"}},
		{"cuda build without a device, wanted", true, libs, 0, []string{"no CUDA device", "nvidia-smi"}},
		{"cuda build with a device", true, libs, 1, nil},
	}
	for _, c := range cases {
		err := checkCUDA(c.want, c.libs, c.devices)
		if len(c.errHas) == 0 {
			if err != nil {
				t.Errorf("%s: unexpected error %v", c.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, s := range c.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error lacks %q: %v", c.name, s, err)
			}
		}
	}
}

// TestWantCUDAOnCPUBuildFails runs the real binary: -want-cuda on this CPU
// build must exit 1 and say the CUDA libraries are missing.
func TestWantCUDAOnCPUBuildFails(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "torchinfo")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-want-cuda").CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("torchinfo -want-cuda on a CPU build: want exit 1, got %v:\n%s", err, out)
	}
	if !strings.Contains(string(out), "CUDA libraries") || !strings.Contains(string(out), "not loaded") {
		t.Errorf("message should say the CUDA libraries are not loaded:\n%s", out)
	}
}
