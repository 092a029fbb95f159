package control

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
)

// pieceWriter records the size of every Write.
type pieceWriter struct {
	bytes.Buffer
	max int
}

func (w *pieceWriter) Write(p []byte) (int, error) {
	w.max = max(w.max, len(p))
	return w.Buffer.Write(p)
}

// TestStreamedStateMatchesEncodeState: the streaming writer produces
// exactly EncodeState's bytes, in pieces of at most 1 MiB, and the streaming
// reader takes them back.
func TestStreamedStateMatchesEncodeState(t *testing.T) {
	p := make([]float32, 300_001)
	o := make([]float32, 2*len(p))
	for i := range p {
		p[i] = float32(i) * 0.5
	}
	for i := range o {
		o[i] = -float32(i) / 3
	}
	var w pieceWriter
	if err := WriteStateHeader(&w, len(p), len(o), 17); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]float32{p, o} {
		if err := WriteFloat32s(&w, b); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(w.Bytes(), EncodeState(p, o, 17)) {
		t.Fatal("streamed state differs from EncodeState")
	}
	if w.max > 1<<20 {
		t.Fatalf("a write of %d bytes: pieces must stay bounded", w.max)
	}
	r := bytes.NewReader(w.Bytes())
	np, no, steps, err := ReadStateHeader(r)
	if err != nil || np != len(p) || no != len(o) || steps != 17 {
		t.Fatalf("header: %d %d %d %v", np, no, steps, err)
	}
	gp, gop := make([]float32, np), make([]float32, no)
	if err := ReadFloat32s(r, gp); err != nil {
		t.Fatal(err)
	}
	if err := ReadFloat32s(r, gop); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gp, p) || !slices.Equal(gop, o) {
		t.Fatal("read back differs")
	}
	if err := ExpectEOF(r); err != nil {
		t.Fatalf("ExpectEOF at the end: %v", err)
	}
	if err := ExpectEOF(strings.NewReader("x")); err == nil {
		t.Fatal("ExpectEOF accepted trailing bytes")
	}
	// Truncated data and a corrupt header are errors.
	if err := ReadFloat32s(bytes.NewReader(make([]byte, 6)), make([]float32, 2)); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated: %v", err)
	}
	bad := EncodeState(nil, nil, 0)
	bad[7] = 0xff
	if _, _, _, err := ReadStateHeader(bytes.NewReader(bad)); err == nil {
		t.Fatal("absurd parameter count accepted")
	}
}
