package setupcheck

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeLibtorch lays out a libtorch directory of empty stub libraries (each
// with its SONAME) and the one header file scripts/libtorch.sh looks for.
// libtorch_cpu.so defines one function, which the linked test program
// calls; cuda adds libtorch_cuda.so and libc10_cuda.so; cxx11 makes libc10.so
// export a function whose mangled name carries the new C++ ABI's __cxx11;
// cxx20 makes torch/all.h demand C++20, as libtorch 2.13+ does.
func fakeLibtorch(t *testing.T, cuda, cxx11, cxx20 bool) string {
	t.Helper()
	dir := t.TempDir()
	lib := filepath.Join(dir, "lib")
	api := filepath.Join(dir, "include", "torch", "csrc", "api", "include", "torch")
	for _, d := range []string{lib, api} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(api, "torch.h"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if cxx20 {
		all := "#if __cplusplus < 202002L\n#error C++20 or later compatible compiler is required to use PyTorch.\n#endif\n"
		if err := os.WriteFile(filepath.Join(api, "all.h"), []byte(all), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	names := []string{"torch_cpu", "c10", "torch"}
	if cuda {
		names = append(names, "torch_cuda", "c10_cuda")
	}
	for _, n := range names {
		src := "/dev/null"
		if n == "torch_cpu" {
			// One symbol the test program calls, as gotch calls libtorch.
			src = filepath.Join(dir, "torch_cpu.cpp")
			if err := os.WriteFile(src, []byte("extern \"C\" int ringtune_fake_torch(void) { return 1; }\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if n == "c10" && cxx11 {
			// std::string under the new ABI mangles as
			// NSt7__cxx1112basic_string...
			// Thousands of other symbols after it, as a real libc10 has:
			// nm's output then outgrows a pipe, which a reader that stops
			// at the first match (grep -q) turns into SIGPIPE.
			src = filepath.Join(dir, "c10.cpp")
			var b strings.Builder
			b.WriteString("#include <string>\nnamespace c10 { void f(const std::string&) {} }\n")
			for i := range 4000 {
				fmt.Fprintf(&b, "extern \"C\" void ringtune_fake_%d(void) {}\n", i)
			}
			if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		so := "lib" + n + ".so"
		args := []string{"-shared", "-fPIC", "-o", filepath.Join(lib, so), "-Wl,-soname," + so, "-x", "c++", src}
		if n == "c10" && cxx11 {
			args = append(args, "-D_GLIBCXX_USE_CXX11_ABI=1")
		}
		if out, err := exec.Command("g++", args...).CombinedOutput(); err != nil {
			t.Fatalf("g++ %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

// envFor sources scripts/env.sh with LIBTORCH=dir and returns the variables
// it exports.
func envFor(t *testing.T, dir string) map[string]string {
	t.Helper()
	// The scripts that source env.sh run with pipefail.
	script := `set -euo pipefail; . scripts/env.sh && printf 'CGO_CXXFLAGS=%s\nCGO_LDFLAGS=%s\nGOFLAGS=%s\n' "$CGO_CXXFLAGS" "$CGO_LDFLAGS" "${GOFLAGS:-}"`
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), "LIBTORCH="+dir, "RINGTUNE_CACHE="+t.TempDir(), "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("source scripts/env.sh with LIBTORCH=%s: %v\n%s", dir, err, out)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// gotchLDFLAGS are the -l flags of gotch's own #cgo LDFLAGS lines, read
// from the module cache: the libraries every ringtune binary asks for.
func gotchLDFLAGS(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/sugarme/gotch").Output()
	if err != nil {
		t.Fatalf("go list gotch: %v", err)
	}
	src, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "libtch", "lib.go"))
	if err != nil {
		t.Fatal(err)
	}
	var flags []string
	for _, line := range strings.Split(string(src), "\n") {
		_, rest, ok := strings.Cut(line, "#cgo LDFLAGS:")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			if strings.HasPrefix(f, "-l") {
				flags = append(flags, f)
			}
		}
	}
	if len(flags) == 0 {
		t.Fatal("found no -l flags in gotch's libtch/lib.go")
	}
	return flags
}

// linkNeeded links a small cgo program that names gotch's libraries, with
// the given CGO_LDFLAGS, and returns the NEEDED entries of the binary.
func linkNeeded(t *testing.T, ldflags string) []string {
	t.Helper()
	dir := t.TempDir()
	prog := "package main\n\n// #cgo LDFLAGS: " + strings.Join(gotchLDFLAGS(t), " ") +
		"\n// int ringtune_fake_torch(void);\nimport \"C\"\n\nfunc main() { _ = C.ringtune_fake_torch() }\n"
	for name, body := range map[string]string{"main.go": prog, "go.mod": "module linkcheck\n\ngo 1.26\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "linkcheck")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_LDFLAGS="+ldflags, "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("link with CGO_LDFLAGS=%q: %v\n%s", ldflags, err, out)
	}
	out, err := exec.Command("readelf", "-d", bin).Output()
	if err != nil {
		t.Fatalf("readelf -d: %v", err)
	}
	var needed []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "(NEEDED)") {
			if i, j := strings.Index(line, "["), strings.Index(line, "]"); i >= 0 && j > i {
				needed = append(needed, line[i+1:j])
			}
		}
	}
	return needed
}

func has(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestCUDALibtorchIsNeeded: a binary linked with scripts/env.sh's flags
// against a CUDA libtorch NEEDs libtorch_cuda and libc10_cuda. Without the
// explicit --no-as-needed the linker drops them (gotch's C++ uses no symbol
// that only they define), and the binary sees no GPU; the test shows both.
func TestCUDALibtorchIsNeeded(t *testing.T) {
	fake := fakeLibtorch(t, true, false, false)
	ld := envFor(t, fake)["CGO_LDFLAGS"]
	if !strings.Contains(ld, "--no-as-needed -ltorch_cuda -lc10_cuda") {
		t.Errorf("CGO_LDFLAGS for a CUDA libtorch lack the explicit CUDA libraries: %q", ld)
	}
	needed := linkNeeded(t, ld)
	for _, want := range []string{"libtorch_cuda.so", "libc10_cuda.so", "libtorch_cpu.so"} {
		if !has(needed, want) {
			t.Errorf("binary linked with env.sh's flags does not NEED %s; NEEDED: %v", want, needed)
		}
	}
	// The same link without the explicit CUDA libraries: they are dropped.
	plain := strings.Replace(ld, "-Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed", "", 1)
	if dropped := linkNeeded(t, plain); has(dropped, "libtorch_cuda.so") {
		t.Errorf("control: without --no-as-needed libtorch_cuda.so should be dropped, NEEDED: %v", dropped)
	}
}

// TestCPULibtorchLinksWithoutCUDA: a CPU libtorch directory gets no CUDA
// flags, and the empty stand-ins for gotch's CUDA names stay out.
func TestCPULibtorchLinksWithoutCUDA(t *testing.T) {
	fake := fakeLibtorch(t, false, false, false)
	ld := envFor(t, fake)["CGO_LDFLAGS"]
	if strings.Contains(ld, "torch_cuda") {
		t.Errorf("CGO_LDFLAGS for a CPU libtorch name the CUDA libraries: %q", ld)
	}
	needed := linkNeeded(t, ld)
	for _, n := range needed {
		if strings.Contains(n, "cuda") || strings.Contains(n, "nvrtc") || strings.Contains(n, "cudnn") {
			t.Errorf("CPU build NEEDs %s; NEEDED: %v", n, needed)
		}
	}
	if !has(needed, "libtorch_cpu.so") {
		t.Errorf("CPU build does not NEED libtorch_cpu.so; NEEDED: %v", needed)
	}
}

// TestABIAndStandardDetected: the C++ ABI comes from libc10.so's symbols,
// and headers that demand C++20 get it through a `go build -overlay` that
// replaces gotch's -std=c++17 (which cgo places after CGO_CXXFLAGS).
func TestABIAndStandardDetected(t *testing.T) {
	old := envFor(t, fakeLibtorch(t, false, false, false))
	if !strings.Contains(old["CGO_CXXFLAGS"], "-D_GLIBCXX_USE_CXX11_ABI=0") {
		t.Errorf("libc10 without __cxx11 symbols: want ABI 0, CGO_CXXFLAGS=%q", old["CGO_CXXFLAGS"])
	}
	if strings.Contains(old["GOFLAGS"], "-overlay") {
		t.Errorf("C++17 headers need no overlay, GOFLAGS=%q", old["GOFLAGS"])
	}
	fake := fakeLibtorch(t, false, true, true)
	vars := envFor(t, fake)
	if !strings.Contains(vars["CGO_CXXFLAGS"], "-D_GLIBCXX_USE_CXX11_ABI=1") {
		t.Errorf("libc10 with __cxx11 symbols: want ABI 1, CGO_CXXFLAGS=%q", vars["CGO_CXXFLAGS"])
	}
	if !strings.Contains(vars["GOFLAGS"], "-overlay=") {
		t.Fatalf("C++20 headers: want -overlay in GOFLAGS, got %q", vars["GOFLAGS"])
	}
	// What go build would run (-n: print, do not run): gotch's C++ and ours
	// must get -std=c++20 and no -std=c++17.
	cmd := exec.Command("go", "build", "-n", "./internal/torchinfo")
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_CXXFLAGS="+vars["CGO_CXXFLAGS"], "CGO_LDFLAGS="+vars["CGO_LDFLAGS"], "GOFLAGS="+vars["GOFLAGS"])
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build -n with the overlay: %v\n%s", err, out)
	}
	var cxx []string
	for _, line := range strings.Split(string(out), "\n") {
		// A C++ compile ends with its source file.
		f := strings.Fields(line)
		if len(f) > 0 && (strings.HasSuffix(f[len(f)-1], "torch_api.cpp") || strings.HasSuffix(f[len(f)-1], "rt.cpp")) {
			cxx = append(cxx, line)
		}
	}
	if len(cxx) < 2 {
		t.Fatalf("go build -n shows no compile of torch_api.cpp and rt.cpp:\n%s", out)
	}
	for _, line := range cxx {
		if !strings.Contains(line, "-std=c++20") || strings.Contains(line, "-std=c++17") {
			t.Errorf("want -std=c++20 only, got: %s", line)
		}
	}
}
