// Package safetensors reads and writes Hugging Face checkpoints in the
// safetensors format (single files and sharded directories with an index),
// in pure Go.
//
// The format is an 8-byte little-endian header length N, N bytes of JSON
// describing every tensor (dtype, shape, byte range in the data section), and
// the data section itself. Readers memory-map the file so that multi-gigabyte
// checkpoints are not copied into the Go heap; tensor bytes are handed out as
// views and converted to float32 only on request.
package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"unsafe"
)

// DType is a safetensors element type, spelled as in the file header.
type DType string

// The element types this package knows. All are readable as raw bytes;
// Float32s converts the floating-point ones and Int64s the integer ones.
const (
	Bool   DType = "BOOL"
	U8     DType = "U8"
	I8     DType = "I8"
	F8E5M2 DType = "F8_E5M2"
	F8E4M3 DType = "F8_E4M3"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
)

// Size is the number of bytes of one element, or 0 for a dtype this package
// does not know.
func (d DType) Size() int {
	switch d {
	case Bool, U8, I8, F8E5M2, F8E4M3:
		return 1
	case I16, U16, F16, BF16:
		return 2
	case I32, U32, F32:
		return 4
	case F64, I64, U64:
		return 8
	}
	return 0
}

// f16ToF32 widens an IEEE 754 binary16 value. Every half value is exactly
// representable as a float32, so this is lossless, including subnormals
// (renormalised into float32's wider exponent range), infinities and NaN
// payloads.
func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// A subnormal half is mant·2^-24; shift until the implicit bit
		// appears so it becomes a normal float32.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}

// bf16ToF32 widens a bfloat16 value: bfloat16 is the top half of a float32.
func bf16ToF32(b uint16) float32 {
	return math.Float32frombits(uint32(b) << 16)
}

// decodeFloat32s converts little-endian elements of dtype d to float32.
// F64 is rounded to nearest; the half-width types convert exactly.
func decodeFloat32s(d DType, b []byte) ([]float32, error) {
	if d.Size() == 0 {
		return nil, fmt.Errorf("dtype %s is not a floating-point type; read it with Tensor (raw bytes) or Int64s", d)
	}
	out := make([]float32, len(b)/d.Size())
	if err := decodeFloat32sInto(d, b, out); err != nil {
		return nil, err
	}
	return out, nil
}

// decodeFloat32sInto is decodeFloat32s into dst, which must have exactly
// the tensor's number of elements: a model loads each tensor straight into
// its place in the parameter block, with no copy of the tensor in between.
func decodeFloat32sInto(d DType, b []byte, dst []float32) error {
	if sz := d.Size(); sz > 0 && len(b) != sz*len(dst) {
		return fmt.Errorf("%d bytes of %s into %d elements", len(b), d, len(dst))
	}
	le := binary.LittleEndian
	switch d {
	case F32:
		if littleEndianHost {
			// A byte copy: a tensor's offset in the file need not be
			// 4-aligned.
			if len(dst) > 0 {
				copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(dst))), 4*len(dst)), b)
			}
			return nil
		}
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = f16ToF32(le.Uint16(b[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = bf16ToF32(le.Uint16(b[2*i:]))
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(le.Uint64(b[8*i:])))
		}
	default:
		return fmt.Errorf("dtype %s is not a floating-point type; read it with Tensor (raw bytes) or Int64s", d)
	}
	return nil
}

// littleEndianHost is true where a float32's in-memory bytes are already
// safetensors' little-endian encoding, so F32 data can be copied or
// aliased as it is.
var littleEndianHost = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// decodeInt64s widens little-endian integer elements of dtype d to int64.
func decodeInt64s(d DType, b []byte) ([]int64, error) {
	le := binary.LittleEndian
	n := 0
	if s := d.Size(); s > 0 {
		n = len(b) / s
	}
	out := make([]int64, n)
	switch d {
	case Bool, U8:
		for i := range out {
			out[i] = int64(b[i])
		}
	case I8:
		for i := range out {
			out[i] = int64(int8(b[i]))
		}
	case I16:
		for i := range out {
			out[i] = int64(int16(le.Uint16(b[2*i:])))
		}
	case U16:
		for i := range out {
			out[i] = int64(le.Uint16(b[2*i:]))
		}
	case I32:
		for i := range out {
			out[i] = int64(int32(le.Uint32(b[4*i:])))
		}
	case U32:
		for i := range out {
			out[i] = int64(le.Uint32(b[4*i:]))
		}
	case I64:
		for i := range out {
			out[i] = int64(le.Uint64(b[8*i:]))
		}
	default:
		// U64 is refused rather than silently wrapped above 2^63.
		return nil, fmt.Errorf("dtype %s cannot be read as int64; read it with Tensor (raw bytes)", d)
	}
	return out, nil
}

// Float32View is an F32 tensor whose Data aliases values on a
// little-endian host (no copy: Save writes a model's parameter block
// straight from libtorch's memory), and is a copy elsewhere. values must
// not change until the tensor has been written.
func Float32View(name string, shape []int64, values []float32) Tensor {
	if !littleEndianHost {
		return FromFloat32(name, shape, values)
	}
	var data []byte
	if len(values) > 0 {
		data = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(values))), 4*len(values))
	}
	return Tensor{Name: name, DType: F32, Shape: slices.Clone(shape), Data: data}
}

// Float32Bytes encodes values as little-endian F32 bytes, the layout Write
// expects for an F32 tensor.
func Float32Bytes(values []float32) []byte {
	b := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}
