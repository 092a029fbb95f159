package safetensors

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// The oracle is Debian's python3 with torch and numpy (python3-torch): it
// writes and reads safetensors from the spec alone, independently of this
// package.
const python = "/usr/bin/python3"

type expectedTensor struct {
	DType DType    `json:"dtype"`
	Shape []int64  `json:"shape"`
	F32   []uint32 `json:"f32"`
	Ints  []int64  `json:"ints"`
}

func needOracle(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(python, "-c", "import torch, numpy").CombinedOutput(); err != nil {
		t.Skipf("skipping the torch oracle: %s cannot import torch and numpy (install python3-torch): %v %s", python, err, out)
	}
}

func runOracle(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(python, append([]string{"testdata/oracle.py"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("oracle %v: %v\n%s", args, err, out)
	}
}

func readExpected(t *testing.T, path string) map[string]expectedTensor {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var exp map[string]expectedTensor
	if err := json.Unmarshal(raw, &exp); err != nil {
		t.Fatal(err)
	}
	return exp
}

func sameF32Bits(a, b uint32) bool {
	isNaN := func(x uint32) bool { return x&0x7f800000 == 0x7f800000 && x&0x7fffff != 0 }
	return a == b || isNaN(a) && isNaN(b)
}

// TestOracleReadsTorchFiles reads files torch wrote and compares every value
// with torch's own conversion to float32 (or int64).
func TestOracleReadsTorchFiles(t *testing.T) {
	needOracle(t)
	dir := t.TempDir()
	runOracle(t, "write", dir)
	exp := readExpected(t, filepath.Join(dir, "expected.json"))
	for _, p := range []string{"padded.safetensors", "reversed.safetensors", "sharded"} {
		t.Run(p, func(t *testing.T) {
			c, err := Load(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if len(c.Names()) != len(exp) {
				t.Errorf("%d tensors, oracle wrote %d", len(c.Names()), len(exp))
			}
			for name, want := range exp {
				info, ok := c.Info(name)
				if !ok {
					t.Errorf("tensor %s missing", name)
					continue
				}
				if info.DType != want.DType || !slices.Equal(info.Shape, want.Shape) {
					t.Errorf("%s: %s%v, want %s%v", name, info.DType, info.Shape, want.DType, want.Shape)
				}
				if want.F32 != nil {
					got, err := c.Float32s(name)
					if err != nil {
						t.Fatal(err)
					}
					if len(got) != len(want.F32) {
						t.Fatalf("%s: %d values, want %d", name, len(got), len(want.F32))
					}
					for i, v := range got {
						if !sameF32Bits(math.Float32bits(v), want.F32[i]) {
							t.Errorf("%s[%d] = %#x, torch says %#x", name, i, math.Float32bits(v), want.F32[i])
						}
					}
				} else {
					got, err := c.Int64s(name)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, want.Ints) {
						t.Errorf("%s = %v, torch says %v", name, got, want.Ints)
					}
				}
			}
			if p == "padded.safetensors" {
				if m := c.Metadata(); m["format"] != "pt" || m["src"] != "oracle" || len(m) != 2 {
					t.Errorf("Metadata = %v", m)
				}
			}
		})
	}
}

// TestOracleReadsOurFiles closes the loop: tensors torch wrote are copied
// through Write and WriteDir, plus float32 data made here, and torch must
// read back exactly its original values from files laid out to the spec.
func TestOracleReadsOurFiles(t *testing.T) {
	needOracle(t)
	dir := t.TempDir()
	runOracle(t, "write", dir)
	exp := readExpected(t, filepath.Join(dir, "expected.json"))
	src, err := Load(filepath.Join(dir, "padded.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var ts []Tensor
	for _, name := range src.Names() {
		tt, err := src.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tt)
	}
	vals := []float32{0.1, -3, float32(math.Inf(1)), 1e-45, math.MaxFloat32}
	ts = append(ts, FromFloat32("go.w", []int64{1, 5}, vals))
	bits := make([]uint32, len(vals))
	for i, v := range vals {
		bits[i] = math.Float32bits(v)
	}
	exp["go.w"] = expectedTensor{DType: F32, Shape: []int64{1, 5}, F32: bits}
	meta := map[string]string{"format": "pt", "saved_by": "ringtune \"go\" <test>"}

	withMeta := map[string]any{"__metadata__": meta}
	for k, v := range exp {
		withMeta[k] = v
	}
	raw, err := json.Marshal(withMeta)
	if err != nil {
		t.Fatal(err)
	}
	expPath := filepath.Join(dir, "go-expected.json")
	if err := os.WriteFile(expPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	single := filepath.Join(dir, "go.safetensors")
	if err := Write(single, ts, meta); err != nil {
		t.Fatal(err)
	}
	runOracle(t, "check", single, expPath)

	sharded := filepath.Join(dir, "go-sharded")
	if err := os.Mkdir(sharded, 0o755); err != nil {
		t.Fatal(err)
	}
	paths, err := WriteDir(sharded, ts, meta, 200)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 3 {
		t.Fatalf("WriteDir with a 200-byte limit wrote only %v", paths)
	}
	runOracle(t, "check", sharded, expPath)
}
