package safetensors

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestFloat32sIntoMatchesFloat32s: decoding into a caller's slice (how a
// model loads each tensor into its parameter block) gives Float32s' values
// for every float dtype, including an F32 tensor at an offset that is not
// 4-aligned, and refuses a slice of the wrong size or an integer dtype.
func TestFloat32sIntoMatchesFloat32s(t *testing.T) {
	vals := []float32{1.5, -2.25, 0, float32(math.Inf(1)), 3e-5, 65504}
	f64 := make([]byte, 0, 8*len(vals))
	for _, v := range vals {
		f64 = le64(f64, math.Float64bits(float64(v)))
	}
	ts := []Tensor{
		{Name: "a_f64", DType: F64, Shape: []int64{6}, Data: f64},
		{Name: "b_f32", DType: F32, Shape: []int64{2, 3}, Data: Float32Bytes(vals)},
		{Name: "c_f16", DType: F16, Shape: []int64{6}, Data: []byte{0, 0x3e, 0x80, 0xc0, 0, 0, 0, 0x7c, 0xf7, 0x01, 0xff, 0x7b}},
		{Name: "d_bf16", DType: BF16, Shape: []int64{6}, Data: []byte{0xc0, 0x3f, 0x10, 0xc0, 0, 0, 0x80, 0x7f, 0xfb, 0x37, 0x80, 0x47}},
		{Name: "e_i64", DType: I64, Shape: []int64{1}, Data: make([]byte, 8)},
	}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, ts, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, name := range []string{"a_f64", "b_f32", "c_f16", "d_bf16"} {
		want, err := f.Float32s(name)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]float32, len(want))
		if err := f.Float32sInto(name, got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: Float32sInto %v, Float32s %v", name, got, want)
		}
	}
	// A 2-byte shift: F32 bytes at an odd-aligned place in a foreign file.
	raw := append([]byte{9, 9}, Float32Bytes(vals)...)
	got := make([]float32, len(vals))
	if err := decodeFloat32sInto(F32, raw[2:], got); err != nil || !slices.Equal(got, vals) {
		t.Errorf("unaligned F32: %v (%v), want %v", got, err, vals)
	}
	if err := f.Float32sInto("b_f32", make([]float32, 5)); err == nil || !strings.Contains(err.Error(), "b_f32") {
		t.Errorf("wrong destination size: error %v should name the tensor", err)
	}
	if err := f.Float32sInto("e_i64", make([]float32, 1)); err == nil || !strings.Contains(err.Error(), "not a floating-point") {
		t.Errorf("integer tensor: error %v", err)
	}
	if err := f.Float32sInto("nope", nil); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing tensor: error %v should name it", err)
	}
}

// TestFloat32ViewWritesTheValues: a tensor that aliases a float32 slice
// (Save writes a model's parameter block without copying it) writes the
// same file as a copied one.
func TestFloat32ViewWritesTheValues(t *testing.T) {
	vals := []float32{1, -2, 3.5, 1e-20}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	if err := Write(a, []Tensor{Float32View("x", []int64{2, 2}, vals)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := Write(b, []Tensor{FromFloat32("x", []int64{2, 2}, vals)}, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{a, b} {
		f, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.Float32s("x")
		f.Close()
		if err != nil || !slices.Equal(got, vals) {
			t.Errorf("%s: %v (%v), want %v", p, got, err, vals)
		}
	}
	if v := Float32View("empty", []int64{0}, nil); len(v.Data) != 0 {
		t.Errorf("empty view has %d bytes", len(v.Data))
	}
}

func le64(b []byte, v uint64) []byte {
	for i := range 8 {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}
