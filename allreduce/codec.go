package allreduce

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// codecName is the gRPC content-subtype of ring streams
// ("application/grpc+ringtune-raw"). Messages are our own header plus raw
// payload bytes, never protobuf: encoding is a 44-byte header write and
// decoding feeds gRPC's received buffers straight into the add or copy.
const codecName = "ringtune-raw"

func init() { encoding.RegisterCodecV2(rawCodec{}) }

type rawCodec struct{}

func (rawCodec) Name() string { return codecName }

// outMsg is a message to send: an encoded header and an optional payload
// buffer that gRPC frees once it has been written to the transport.
type outMsg struct {
	hdr     []byte
	payload mem.Buffer
}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*outMsg)
	if !ok {
		return nil, fmt.Errorf("allreduce codec: cannot marshal %T", v)
	}
	if m.payload == nil {
		return mem.BufferSlice{mem.SliceBuffer(m.hdr)}, nil
	}
	return mem.BufferSlice{mem.SliceBuffer(m.hdr), m.payload}, nil
}

// inMsg receives one message. With want == nil it accepts only the control
// message of kind expect (a hello when expect is 0);
// otherwise it accepts only the data message described by want and applies
// its payload through sink while gRPC's buffers are still held.
type inMsg struct {
	hdr    header
	expect uint8
	want   *header
	sink   *sink
	// resolve, if set, fills want and sink once a message has arrived (it
	// may wait for the caller to start the operation the message is for).
	resolve func() error
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*inMsg)
	if !ok {
		return fmt.Errorf("allreduce codec: cannot unmarshal into %T", v)
	}
	return m.decode(data)
}

func (m *inMsg) decode(data mem.BufferSlice) error {
	var hb [headerLen]byte
	got, first, off := 0, 0, 0
	for first < len(data) && got < headerLen {
		b := data[first].ReadOnlyData()
		k := copy(hb[got:], b)
		got += k
		if k < len(b) {
			off = k
			break
		}
		first++
	}
	if got < headerLen {
		return fmt.Errorf("message of %d bytes is shorter than the %d-byte header", got, headerLen)
	}
	h, err := decodeHeader(hb[:])
	if err != nil {
		return err
	}
	m.hdr = h
	total := data.Len() - headerLen
	if m.want == nil {
		want := m.expect
		if want == 0 {
			want = kindHello
		}
		if h.Kind != want {
			return fmt.Errorf("got message kind %d where only kind %d (1 hello, 3 offer) is allowed", h.Kind, want)
		}
		if total != 0 {
			return fmt.Errorf("control message (kind %d) carries %d payload bytes, want none", h.Kind, total)
		}
		return nil
	}
	if m.resolve != nil {
		if err := m.resolve(); err != nil {
			return err
		}
	}
	if err := checkData(h, *m.want); err != nil {
		return err
	}
	if want := int(h.Count) * h.Wire.elemSize(); total != want {
		return fmt.Errorf("operation %d %v step %d chunk %d: payload is %d bytes, header says %d elements (%d bytes)", h.Seq, h.Phase, h.Step, h.Chunk, total, h.Count, want)
	}
	if len(m.sink.dst) != int(h.Count) {
		return fmt.Errorf("operation %d: %d elements for a %d-element destination", h.Seq, h.Count, len(m.sink.dst))
	}
	for i := first; i < len(data); i++ {
		b := data[i].ReadOnlyData()
		if i == first {
			b = b[off:]
		}
		if len(b) > 0 {
			m.sink.write(b)
		}
	}
	if !m.sink.done() {
		return fmt.Errorf("operation %d: payload ended inside an element", h.Seq)
	}
	return nil
}
