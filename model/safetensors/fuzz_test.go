package safetensors

import (
	"bytes"
	"slices"
	"testing"
)

// FuzzParseHeader feeds arbitrary files to the parser. Whatever it accepts
// must be safe to slice (every range inside the data section) and must
// survive a round trip through the writer's encoding unchanged.
func FuzzParseHeader(f *testing.F) {
	f.Add(craft("{}", nil))
	f.Add(craft(`{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}  `, []byte{0, 0x3c, 0, 0xbc}))
	f.Add(craft(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[0],"data_offsets":[1,1]}}`, []byte{7}))
	f.Add(craft(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, make([]byte, 4)))
	f.Add(craft(`{"a":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]}}`, make([]byte, 7)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{'})
	f.Fuzz(func(t *testing.T, buf []byte) {
		h, err := parseHeader(buf, "fuzz")
		if err != nil {
			return
		}
		dataLen := int64(len(buf)) - h.dataStart
		ts := make([]Tensor, len(h.tensors))
		for i, info := range h.tensors {
			if info.Begin < 0 || info.End < info.Begin || info.End > dataLen {
				t.Fatalf("accepted out-of-bounds tensor %+v in %d-byte data section", info, dataLen)
			}
			if h.byName[info.Name] != i {
				t.Fatalf("index of %q is %d, want %d", info.Name, h.byName[info.Name], i)
			}
			ts[i] = Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape,
				Data: buf[h.dataStart+info.Begin : h.dataStart+info.End]}
		}
		if err := checkTensors(ts); err != nil {
			t.Fatalf("parser accepted tensors the writer rejects: %v", err)
		}
		var out bytes.Buffer
		ordered := layout(ts)
		hdr := headerBytes(ordered, h.metadata)
		out.Write(craft(string(hdr), nil))
		for _, t := range ordered {
			out.Write(t.Data)
		}
		h2, err := parseHeader(out.Bytes(), "re-encoded")
		if err != nil {
			t.Fatalf("re-encoded file rejected: %v", err)
		}
		if len(h2.tensors) != len(h.tensors) || len(h2.metadata) != len(h.metadata) {
			t.Fatalf("round trip changed the tensor or metadata count")
		}
		for k, v := range h.metadata {
			if h2.metadata[k] != v {
				t.Fatalf("metadata %q: %q became %q", k, v, h2.metadata[k])
			}
		}
		for i, a := range h.tensors {
			b := h2.tensors[i]
			if a.Name != b.Name || a.DType != b.DType || !slices.Equal(a.Shape, b.Shape) ||
				!bytes.Equal(buf[h.dataStart+a.Begin:h.dataStart+a.End], out.Bytes()[h2.dataStart+b.Begin:h2.dataStart+b.End]) {
				t.Fatalf("round trip changed tensor %+v into %+v", a, b)
			}
		}
	})
}
