// Command torchinfo checks that libtorch loads and runs in a Go binary, and
// on what: libtorch version, BLAS library, threads, CUDA devices, and a
// single-thread matrix-product rate. scripts/setup.sh runs it. It exits 1
//   - when libtorch runs on the reference BLAS, which makes training ~5x
//     slower;
//   - when the binary is a CUDA build (libtorch_cuda is loaded) but sees no
//     CUDA device: the driver, the GPU or CUDA_VISIBLE_DEVICES is wrong;
//   - with -want-cuda (setup.sh passes it for a CUDA libtorch), also when
//     libtorch's CUDA libraries are not loaded at all: they were dropped at
//     link time and the binary would silently train on the CPU.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/ringtune/ringtune/model/torch"
)

func main() {
	wantCUDA := flag.Bool("want-cuda", false, "fail unless libtorch's CUDA libraries are loaded and at least one CUDA device is visible")
	flag.Parse()
	if err := run(*wantCUDA); err != nil {
		fmt.Fprintln(os.Stderr, "torchinfo:", err)
		os.Exit(1)
	}
}

func run(wantCUDA bool) error {
	th := torch.NewThread()
	defer th.Close()
	return th.Do(func() error {
		if err := torch.SetThreads(1); err != nil {
			return err
		}
		gf, err := torch.MatmulGFLOPS(512, 5)
		if err != nil {
			return fmt.Errorf("matrix product on libtorch %s: %w", torch.Version(), err)
		}
		libs, err := torch.BLASLibraries()
		if err != nil {
			return err
		}
		cudaLibs, err := torch.CUDALibraries()
		if err != nil {
			return err
		}
		devices := torch.CUDADeviceCount()
		open, _ := torch.UsesOpenBLAS()
		fmt.Printf("torchinfo: libtorch %s, BLAS %s, cuda libraries %s, cuda devices %d, 1-thread matmul %.1f GFLOP/s\n",
			torch.Version(), orNone(libs), orNone(cudaLibs), devices, gf)
		if err := checkCUDA(wantCUDA, cudaLibs, devices); err != nil {
			return err
		}
		// Debian's libtorch takes its BLAS from libblas.so.3; official and
		// pip builds carry MKL inside libtorch_cpu, and map no BLAS file.
		if !open && len(libs) > 0 && devices == 0 {
			return fmt.Errorf("libtorch is not using OpenBLAS (BLAS: %v): install libopenblas0-pthread "+
				"(sudo apt-get install libopenblas0-pthread) so that libblas.so.3 resolves to OpenBLAS", libs)
		}
		return nil
	})
}

// checkCUDA says what is wrong when a CUDA build cannot reach a GPU.
func checkCUDA(want bool, cudaLibs []string, devices int) error {
	switch {
	case len(cudaLibs) > 0 && devices == 0:
		return fmt.Errorf("this is a CUDA build of libtorch %s (%s loaded) but it sees no CUDA device: "+
			"check nvidia-smi, the NVIDIA driver and CUDA_VISIBLE_DEVICES", torch.Version(), strings.Join(cudaLibs, ", "))
	case want && len(cudaLibs) == 0:
		return errors.New("libtorch's CUDA libraries (libtorch_cuda.so, libc10_cuda.so) are not loaded: " +
			"the binary was linked without them and would run on the CPU only; build with " +
			"scripts/env.sh sourced and LIBTORCH set to the CUDA libtorch (scripts/setup.sh --libtorch DIR)")
	case want && devices == 0:
		return errors.New("no CUDA device visible: check nvidia-smi, the NVIDIA driver and CUDA_VISIBLE_DEVICES")
	}
	return nil
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}
