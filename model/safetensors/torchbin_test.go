package safetensors

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTorchBinAgainstTorchSave reads files written by torch.save itself and
// compares every tensor with torch's values, including views at a storage
// offset and tied weights sharing one storage.
func TestTorchBinAgainstTorchSave(t *testing.T) {
	needOracle(t)
	dir := t.TempDir()
	runOracle(t, "torchsave", dir)
	raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var exp struct {
		Order   []string                  `json:"order"`
		Tensors map[string]expectedTensor `json:"tensors"`
	}
	if err := json.Unmarshal(raw, &exp); err != nil {
		t.Fatal(err)
	}
	ts, err := ReadTorchBin(filepath.Join(dir, "pytorch_model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tt := range ts {
		names = append(names, tt.Name)
		want := exp.Tensors[tt.Name]
		if tt.DType != want.DType || !slices.Equal(tt.Shape, want.Shape) {
			t.Errorf("%s: %s%v, want %s%v", tt.Name, tt.DType, tt.Shape, want.DType, want.Shape)
			continue
		}
		if want.F32 != nil {
			got, err := decodeFloat32s(tt.DType, tt.Data)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want.F32) {
				t.Fatalf("%s: %d values, want %d", tt.Name, len(got), len(want.F32))
			}
			for i, v := range got {
				if !sameF32Bits(math.Float32bits(v), want.F32[i]) {
					t.Errorf("%s[%d] = %#x, torch says %#x", tt.Name, i, math.Float32bits(v), want.F32[i])
				}
			}
		} else {
			got, err := decodeInt64s(tt.DType, tt.Data)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want.Ints) {
				t.Errorf("%s = %v, torch says %v", tt.Name, got, want.Ints)
			}
		}
	}
	if !slices.Equal(names, exp.Order) {
		t.Errorf("order = %v, torch.save wrote %v", names, exp.Order)
	}
	// What comes out must be storable as safetensors as is.
	if err := Write(filepath.Join(dir, "converted.safetensors"), ts, nil); err != nil {
		t.Errorf("converting to safetensors: %v", err)
	}

	for file, want := range map[string]string{
		"module.bin":  "torch.nn.modules.linear",
		"nested.bin":  `"model"`,
		"strided.bin": "not contiguous",
		"legacy.bin":  "legacy",
	} {
		p := filepath.Join(dir, file)
		_, err := ReadTorchBin(p)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want one naming the file and containing %q", file, err, want)
		}
	}
}

// zipWith builds a torch-style archive from the given entries.
func zipWith(t *testing.T, entries map[string][]byte) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(entries[name])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "m.bin")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// onePickle is torch.save({"w": FloatStorage "0" of 2 elements, size (2,)})
// in protocol 2, hand-assembled so corrupt variants can be made from it.
func onePickle(numel byte) []byte {
	p := []byte("\x80\x02ccollections\nOrderedDict\nq\x00)R(X\x01\x00\x00\x00w")
	p = append(p, "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK"...)
	p = append(p, numel)
	p = append(p, "tQK\x00K\x02\x85K\x01\x85\x89h\x00)RtRu."...)
	return p
}

func TestTorchBinCorrupt(t *testing.T) {
	two := Float32Bytes([]float32{1, 2})
	good := zipWith(t, map[string][]byte{"m/data.pkl": onePickle(2), "m/data/0": two, "m/version": []byte("3\n")})
	ts, err := ReadTorchBin(good)
	if err != nil {
		t.Fatalf("hand-made archive: %v", err)
	}
	if len(ts) != 1 || ts[0].Name != "w" || !bytes.Equal(ts[0].Data, two) || !slices.Equal(ts[0].Shape, []int64{2}) {
		t.Fatalf("hand-made archive read as %+v", ts)
	}
	for name, c := range map[string]struct {
		entries map[string][]byte
		want    string
	}{
		"missing storage":  {map[string][]byte{"m/data.pkl": onePickle(2)}, `storage "0"`},
		"short storage":    {map[string][]byte{"m/data.pkl": onePickle(2), "m/data/0": two[:4]}, "truncated"},
		"tensor past end":  {map[string][]byte{"m/data.pkl": onePickle(1), "m/data/0": two[:4]}, "outside"},
		"truncated pickle": {map[string][]byte{"m/data.pkl": onePickle(2)[:40], "m/data/0": two}, "truncated"},
		"no pickle":        {map[string][]byte{"m/data/0": two}, "data.pkl"},
		"big endian":       {map[string][]byte{"m/data.pkl": onePickle(2), "m/data/0": two, "m/byteorder": []byte("big")}, "byte order"},
		"protocol 4":       {map[string][]byte{"m/data.pkl": append([]byte("\x80\x04"), onePickle(2)[2:]...), "m/data/0": two}, "protocol 4"},
		"code execution":   {map[string][]byte{"m/data.pkl": []byte("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."), "m/data/0": two}, "os.system"},
		"unknown opcode":   {map[string][]byte{"m/data.pkl": []byte("\x80\x02I1\n."), "m/data/0": two}, "opcode 0x49"},
	} {
		t.Run(name, func(t *testing.T) {
			p := zipWith(t, c.entries)
			_, err := ReadTorchBin(p)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("err = %v, want one naming %s and containing %q", err, p, c.want)
			}
		})
	}
}

// FuzzUnpickle checks that no pickle, however malformed, crashes the reader.
func FuzzUnpickle(f *testing.F) {
	f.Add(onePickle(2))
	f.Add([]byte("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."))
	f.Add([]byte("\x80\x02}(K\x01]q\x00h\x00ae\x8a\x02\xff\xffu."))
	f.Fuzz(func(t *testing.T, p []byte) {
		// The failure being hunted is a panic (index out of range, bad type
		// assertion) on hostile input; any value or error is acceptable.
		_, _ = unpickle(p)
	})
}
