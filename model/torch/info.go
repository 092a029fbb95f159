package torch

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// BLASLibraries lists the BLAS shared objects mapped into this process
// (Linux), resolved through symlinks. Debian's libtorch links libblas.so.3,
// which is the slow reference BLAS unless OpenBLAS provides that name.
func BLASLibraries() ([]string, error) {
	return mappedLibraries(func(base string) bool { return strings.Contains(base, "blas") })
}

// mappedLibraries lists the files mapped into this process whose base name
// match accepts, resolved through symlinks, each once.
func mappedLibraries(match func(base string) bool) ([]string, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("list mapped libraries: %w", err)
	}
	defer f.Close()
	seen := map[string]bool{}
	var libs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		path := fields[len(fields)-1]
		base := filepath.Base(path)
		if !match(base) || seen[path] {
			continue
		}
		seen[path] = true
		libs = append(libs, path)
	}
	return libs, sc.Err()
}

// CUDALibraries lists libtorch's CUDA shared objects mapped into this
// process (libtorch_cuda, libc10_cuda). A binary linked against a CUDA
// libtorch must have them: without them libtorch reports no CUDA device even
// on a GPU host (the linker drops them under --as-needed unless told not to;
// see scripts/libtorch.sh).
func CUDALibraries() ([]string, error) {
	return mappedLibraries(func(base string) bool {
		return strings.HasPrefix(base, "libtorch_cuda") || strings.HasPrefix(base, "libc10_cuda")
	})
}

// UsesOpenBLAS reports whether the BLAS in this process is OpenBLAS.
func UsesOpenBLAS() (bool, error) {
	libs, err := BLASLibraries()
	if err != nil {
		return false, err
	}
	for _, l := range libs {
		if strings.Contains(l, "openblas") {
			return true, nil
		}
	}
	return false, nil
}

// MatmulGFLOPS times n×n float32 matrix products on the calling thread and
// returns the best rate seen, in GFLOP/s.
func MatmulGFLOPS(n int64, reps int) (float64, error) {
	s := NewScope()
	defer s.Close()
	a := s.Randn(Float32, CPU, n, n)
	b := s.Randn(Float32, CPU, n, n)
	s.Matmul(a, b) // warm-up
	if err := s.Err(); err != nil {
		return 0, err
	}
	best := 0.0
	for range reps {
		t := time.Now()
		c := s.Matmul(a, b)
		el := time.Since(t).Seconds()
		if err := s.Err(); err != nil {
			return 0, err
		}
		_ = c
		if g := 2 * float64(n*n*n) / el / 1e9; g > best {
			best = g
		}
	}
	return best, nil
}
