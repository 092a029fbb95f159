// Command torchinfo checks that libtorch loads and runs in a Go binary, and
// on what: libtorch version, BLAS library, threads, CUDA devices, and a
// single-thread matrix-product rate. scripts/setup.sh runs it; it exits 1
// when libtorch runs on the reference BLAS, which makes training ~5x slower.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/ringtune/ringtune/model/torch"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "torchinfo:", err)
		os.Exit(1)
	}
}

func run() error {
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
		open, _ := torch.UsesOpenBLAS()
		fmt.Printf("torchinfo: libtorch %s, BLAS %s, cuda devices %d, 1-thread matmul %.1f GFLOP/s\n",
			torch.Version(), strings.Join(libs, ","), torch.CUDADeviceCount(), gf)
		if !open && torch.CUDADeviceCount() == 0 {
			return fmt.Errorf("libtorch is not using OpenBLAS (BLAS: %v): install libopenblas0-pthread "+
				"(sudo apt-get install libopenblas0-pthread) so that libblas.so.3 resolves to OpenBLAS", libs)
		}
		return nil
	})
}
