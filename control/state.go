package control

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"unsafe"
)

// StateHeaderLen is the size of the header that starts a state in
// EncodeState's layout.
const StateHeaderLen = 24

// maxStateValues bounds a header's counts (2^40 floats, 4 TiB) so that a
// corrupt header is an error, not an absurd allocation or loop.
const maxStateValues = 1 << 40

// WriteStateHeader writes the 24-byte header of a state with params
// parameters, optim optimizer values and steps optimizer steps.
func WriteStateHeader(w io.Writer, params, optim, steps int) error {
	var h [StateHeaderLen]byte
	binary.LittleEndian.PutUint64(h[0:], uint64(params))
	binary.LittleEndian.PutUint64(h[8:], uint64(optim))
	binary.LittleEndian.PutUint64(h[16:], uint64(steps))
	_, err := w.Write(h[:])
	return err
}

// ReadStateHeader reads the header WriteStateHeader wrote.
func ReadStateHeader(r io.Reader) (params, optim, steps int, err error) {
	var h [StateHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, 0, fmt.Errorf("state header: %w", err)
	}
	p := binary.LittleEndian.Uint64(h[0:])
	o := binary.LittleEndian.Uint64(h[8:])
	s := binary.LittleEndian.Uint64(h[16:])
	if p > maxStateValues || o > maxStateValues || s > math.MaxInt32 {
		return 0, 0, 0, fmt.Errorf("state header is corrupt: %d parameters, %d optimizer values, %d steps", p, o, s)
	}
	return int(p), int(o), int(s), nil
}

// ioPiece bounds one Write/Read of WriteFloat32s/ReadFloat32s, so a
// consumer (a pipe into the bulk plane, a file) sees bounded pieces.
const ioPiece = 1 << 20

var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// WriteFloat32s writes v little-endian. On little-endian hosts it writes
// straight from v's memory (which may alias a libtorch block): no copy of
// the whole slice is ever made.
func WriteFloat32s(w io.Writer, v []float32) error {
	var tmp []byte
	for off := 0; off < len(v); off += ioPiece / 4 {
		part := v[off:min(off+ioPiece/4, len(v))]
		var b []byte
		if littleEndian {
			b = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(part))), 4*len(part))
		} else {
			if tmp == nil {
				tmp = make([]byte, ioPiece)
			}
			b = tmp[:4*len(part)]
			for i, x := range part {
				binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
			}
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// ReadFloat32s fills dst from little-endian data in r, reading straight
// into dst's memory on little-endian hosts.
func ReadFloat32s(r io.Reader, dst []float32) error {
	var tmp []byte
	for off := 0; off < len(dst); off += ioPiece / 4 {
		part := dst[off:min(off+ioPiece/4, len(dst))]
		if littleEndian {
			b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(part))), 4*len(part))
			if _, err := io.ReadFull(r, b); err != nil {
				return err
			}
			continue
		}
		if tmp == nil {
			tmp = make([]byte, ioPiece)
		}
		b := tmp[:4*len(part)]
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		for i := range part {
			part[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	}
	return nil
}

// ExpectEOF returns an error when r holds more bytes: a state must be read
// exactly, a longer stream is a different state.
func ExpectEOF(r io.Reader) error {
	var b [1]byte
	n, err := io.ReadFull(r, b[:])
	if n == 0 && (err == io.EOF || err == io.ErrUnexpectedEOF) {
		return nil
	}
	if err != nil && n == 0 {
		return err
	}
	return fmt.Errorf("state continues past its declared length")
}
