package allreduce

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The shared-memory data path (Transport SHM). It runs on top of the TCP data
// path: the same authenticated data connection, the same 44-byte headers
// with the same checks, the same liveness. Only the payload bytes move
// elsewhere, into a ring of slots in a memory segment both neighbours map,
// when they prove they share a host:
//
//	receiver → sender  offer: "RTSM", version, ok, slots, slot bytes,
//	                   segment nonce (32), segment name (64, zero padded)
//	sender → receiver  1 byte: shmAttached, or shmDeclined (payloads on TCP)
//
// right after the data handshake, on the data connection. The receiver
// creates the segment (/dev/shm/ringtune-<random>, mode 0600, fully
// allocated) and writes a fresh nonce into its first bytes; the sender opens
// the named file in its own shared-memory directory, maps it and checks the
// nonce, which proves it maps the very memory its authenticated neighbour
// created (a rank on another host finds no such file, or another one).
// Whatever the answer, the receiver unlinks the file as soon as it has read
// it, so only the two mappings keep the memory alive and a kill -9 of either
// rank leaks nothing in /dev/shm. Any failure (no /dev/shm, a full one,
// another uid, another host) falls back to payloads on the TCP connection
// and is reported through Config.Logf.
//
// With the segment in use, the sender copies a chunk's payload into the next
// slot (bfloat16 is encoded straight into it) and writes only the header on
// the TCP connection; the receiver reads the header, checks it as before and
// adds (reduce-scatter) or copies (all-gather) straight from the slot into
// the destination, then returns the slot with one credit byte on the same
// connection. Slots are used round robin by both sides, one per data header.
// Each byte thus costs one user-space copy on each side, instead of the
// kernel's copy into and out of the socket plus the copy or add; the TCP
// stream's blocking reads are the only wake-ups (nothing spins), and a dead
// or stalled peer surfaces exactly as with TCP payloads.

const (
	shmMagic     = 0x4d535452 // "RTSM" little-endian
	shmVersion   = 1
	shmNameLen   = 64
	shmOfferLen  = 4 + 1 + 1 + 2 + 4 + 4 + nonceLen + shmNameLen
	shmAttached  = 0x01
	shmDeclined  = 0x00
	shmCredit    = 0xc7 // one returned slot
	shmPrefix    = "ringtune-ar-"
	shmDefDir    = "/dev/shm"
	shmHeaderLen = 4096 // nonce page; slots start page-aligned after it
	// shmBudget is the segment size per link the slot count aims at: four
	// default chunks in flight, as many as the TCP path keeps in socket
	// buffers, while the sender's last slot is still in cache when the
	// receiver adds it.
	shmBudget   = 4 << 20
	shmMinSlots = 2
	shmMaxSlots = 16
)

// shmSlots is the slot count of a segment of slotBytes-byte slots.
func shmSlots(slotBytes int) int {
	return min(shmMaxSlots, max(shmMinSlots, shmBudget/slotBytes))
}

// shmOffer is the receiver's first message after the data handshake.
type shmOffer struct {
	ok        bool
	slots     uint32
	slotBytes uint32
	nonce     [nonceLen]byte
	name      string
}

func (o *shmOffer) encode() []byte {
	b := make([]byte, shmOfferLen)
	binary.LittleEndian.PutUint32(b[0:], shmMagic)
	b[4] = shmVersion
	if o.ok {
		b[5] = 1
	}
	binary.LittleEndian.PutUint32(b[8:], o.slots)
	binary.LittleEndian.PutUint32(b[12:], o.slotBytes)
	copy(b[16:], o.nonce[:])
	copy(b[16+nonceLen:], o.name)
	return b
}

func decodeShmOffer(b []byte) (shmOffer, error) {
	var o shmOffer
	if m := binary.LittleEndian.Uint32(b); m != shmMagic {
		return o, fmt.Errorf("bad shared-memory offer magic %#x", m)
	}
	if b[4] != shmVersion {
		return o, fmt.Errorf("shared-memory offer version %d, this build speaks %d", b[4], shmVersion)
	}
	o.ok = b[5] == 1
	o.slots = binary.LittleEndian.Uint32(b[8:])
	o.slotBytes = binary.LittleEndian.Uint32(b[12:])
	copy(o.nonce[:], b[16:])
	name := b[16+nonceLen:]
	if i := indexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	o.name = string(name)
	return o, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// validShmName accepts only names this package creates, so a peer cannot
// make the sender open any other file.
func validShmName(name string) bool {
	if len(name) != len(shmPrefix)+32 || name[:len(shmPrefix)] != shmPrefix {
		return false
	}
	_, err := hex.DecodeString(name[len(shmPrefix):])
	return err == nil
}

// shmSegment is a mapped segment: a nonce page, then slots.
type shmSegment struct {
	mem       []byte
	slots     int
	slotBytes int
}

// slot is the i-th slot in round-robin order.
func (s *shmSegment) slot(i int) []byte {
	off := shmHeaderLen + (i%s.slots)*s.slotBytes
	return s.mem[off : off+s.slotBytes : off+s.slotBytes]
}

func shmSize(slots, slotBytes int) int { return shmHeaderLen + slots*slotBytes }

func (r *Ring) shmDir() string {
	if r.cfg.shmDir != "" {
		return r.cfg.shmDir
	}
	return shmDefDir
}

func (r *Ring) logf(format string, args ...any) {
	r.cfg.Logf("allreduce: "+r.who()+": "+format, args...)
}

// offerShm runs the receiver's side of the negotiation on an authenticated
// data connection. It returns the segment to read payloads from, or nil to
// read them from conn (the reason is logged). An error means conn broke.
func (r *Ring) offerShm(conn net.Conn) (*shmSegment, error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer conn.SetDeadline(time.Time{})
	slotBytes := r.cfg.ChunkBytes // a float32 chunk is the largest payload
	slots := shmSlots(slotBytes)
	var o shmOffer
	var seg *shmSegment
	var unlink func()
	name := shmPrefix + randomHex(16)
	if _, err := rand.Read(o.nonce[:]); err != nil {
		return nil, fmt.Errorf("allreduce: %s: shared-memory nonce: %w", r.who(), err)
	}
	seg, unlink, err := createShm(r.shmDir(), name, slots, slotBytes)
	if err != nil {
		r.logf("payloads from left neighbour %s travel on TCP: %v", r.peer(r.left), err)
	} else {
		copy(seg.mem, o.nonce[:])
		o = shmOffer{ok: true, slots: uint32(slots), slotBytes: uint32(slotBytes), nonce: o.nonce, name: name}
		// Whatever happens next, the name goes: only the mappings keep
		// the memory alive.
		defer unlink()
	}
	fail := func(err error) (*shmSegment, error) {
		if seg != nil {
			seg.close()
		}
		return nil, fmt.Errorf("allreduce: %s: shared-memory offer to left neighbour %s: %w", r.who(), r.peer(r.left), err)
	}
	if _, err := conn.Write(o.encode()); err != nil {
		return fail(err)
	}
	var ans [1]byte
	if _, err := io.ReadFull(conn, ans[:]); err != nil {
		return fail(err)
	}
	switch {
	case seg == nil:
		return nil, nil
	case ans[0] == shmAttached:
		r.shmRecv.Store(true)
		return seg, nil
	case ans[0] == shmDeclined:
		r.logf("left neighbour %s could not map shared memory (see its log); its payloads travel on TCP", r.peer(r.left))
		seg.close()
		return nil, nil
	}
	return fail(fmt.Errorf("answer %#x to the offer, want %#x or %#x", ans[0], shmAttached, shmDeclined))
}

// acceptShm runs the sender's side: it reads the receiver's offer and maps
// the segment if it can. nil means payloads go on conn (the reason is
// logged); an error means conn broke or the offer was malformed.
func (r *Ring) acceptShm(conn net.Conn) (*shmSegment, error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer conn.SetDeadline(time.Time{})
	fail := func(err error) (*shmSegment, error) {
		return nil, fmt.Errorf("allreduce: %s: shared-memory offer from right neighbour %s: %w", r.who(), r.peer(r.right), err)
	}
	var b [shmOfferLen]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return fail(err)
	}
	o, err := decodeShmOffer(b[:])
	if err != nil {
		return fail(err)
	}
	var seg *shmSegment
	if o.ok {
		seg, err = r.mapOffer(o)
		if err != nil {
			r.logf("payloads to right neighbour %s travel on TCP: %v", r.peer(r.right), err)
		}
	}
	ans := []byte{shmDeclined}
	if seg != nil {
		ans[0] = shmAttached
	}
	if _, err := conn.Write(ans); err != nil {
		if seg != nil {
			seg.close()
		}
		return fail(err)
	}
	if seg != nil {
		r.shmSend.Store(true)
	}
	return seg, nil
}

// mapOffer opens and maps the offered segment and checks that it is the one
// the receiver created.
func (r *Ring) mapOffer(o shmOffer) (*shmSegment, error) {
	if !validShmName(o.name) {
		return nil, fmt.Errorf("offered segment name %q is not one this package creates", o.name)
	}
	if int(o.slotBytes) < r.cfg.ChunkBytes || o.slots < shmMinSlots || o.slots > shmMaxSlots {
		return nil, fmt.Errorf("offered %d slots of %d bytes; need %d-%d slots of at least this rank's chunk of %d bytes (chunk_bytes must agree)",
			o.slots, o.slotBytes, shmMinSlots, shmMaxSlots, r.cfg.ChunkBytes)
	}
	seg, err := openShm(r.shmDir(), o.name, int(o.slots), int(o.slotBytes))
	if err != nil {
		return nil, err
	}
	if string(seg.mem[:nonceLen]) != string(o.nonce[:]) {
		seg.close()
		return nil, fmt.Errorf("segment %s holds another nonce than offered: not the receiver's memory (another host?)", o.name)
	}
	return seg, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand panics rather than return short)
	return hex.EncodeToString(b)
}

// shmSender writes chunk payloads into slots and headers on conn.
type shmSender struct {
	conn    *net.TCPConn
	seg     *shmSegment
	next    int // slot of the next chunk
	free    int // slots the receiver has returned and not yet reused
	hdr     [headerLen]byte
	credits [shmMaxSlots]byte
}

func newShmSender(conn *net.TCPConn, seg *shmSegment) *shmSender {
	return &shmSender{conn: conn, seg: seg, free: seg.slots}
}

// takeCredits blocks until the receiver returns at least one slot.
func (s *shmSender) takeCredits() error {
	n, err := s.conn.Read(s.credits[:])
	for _, c := range s.credits[:n] {
		if c != shmCredit {
			return fmt.Errorf("receiver sent %#x, want a slot credit %#x", c, shmCredit)
		}
	}
	if s.free += n; s.free > s.seg.slots {
		return fmt.Errorf("receiver returned %d slots, only %d are lent", s.free, s.seg.slots)
	}
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

func (s *shmSender) send(op *Op, h *header, a, b int) error {
	for s.free == 0 {
		if err := s.takeCredits(); err != nil {
			return err
		}
	}
	slot := s.seg.slot(s.next)
	if h.Wire == BFloat16 {
		encodeBF16(slot[:2*(b-a)], op.buf[a:b])
	} else {
		copy(slot, f32bytes(op.buf[a:b]))
	}
	s.next++
	s.free--
	h.encode(s.hdr[:])
	if _, err := s.conn.Write(s.hdr[:]); err != nil {
		return err
	}
	op.partDone()
	return nil
}

// closeWrite half-closes the data connection, then reads the receiver's
// last credits until it closes its end: closing a socket with unread bytes
// resets the connection, which could cut off the receiver's last reads.
func (s *shmSender) closeWrite() error {
	if err := s.conn.CloseWrite(); err != nil {
		return err
	}
	for {
		if err := s.takeCredits(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// recvLoopShm reads headers from the left neighbour's data connection and
// their payloads from seg, with the same checks as recvLoopTCP.
func (r *Ring) recvLoopShm(conn *net.TCPConn, seg *shmSegment) error {
	cr := recvCursor{r: r}
	var hb [headerLen]byte
	credit := []byte{shmCredit}
	for i := 0; ; i++ {
		h, dst, stop, err := cr.readHeader(conn, &hb)
		if stop {
			return err
		}
		n := len(dst) * h.Wire.elemSize()
		if n > seg.slotBytes {
			return cr.end(fmt.Errorf("payload of %d bytes exceeds the %d-byte shared-memory slot", n, seg.slotBytes))
		}
		sk := sink{dst: dst, wire: h.Wire, add: h.Phase == ReduceScatter}
		sk.write(seg.slot(i)[:n])
		if _, err := conn.Write(credit); err != nil {
			return cr.end(err)
		}
		cr.applied(dst)
	}
}

// dataSender is a chunkSender on a data connection (TCP or SHM payloads).
type dataSender interface {
	chunkSender
	// closeWrite ends the stream cleanly (Close of a healthy ring).
	closeWrite() error
	// release frees what the sender holds besides the connection.
	release()
}

func (s *tcpSender) closeWrite() error { return s.conn.CloseWrite() }
func (s *tcpSender) release()          {}
func (s *shmSender) release()          { s.seg.close() }

// newDataSender picks the sender for an authenticated data connection to
// the right neighbour: with Transport SHM it first answers the neighbour's
// shared-memory offer.
func (r *Ring) newDataSender(conn *net.TCPConn) (dataSender, error) {
	if r.cfg.Transport != SHM {
		return &tcpSender{conn: conn}, nil
	}
	seg, err := r.acceptShm(conn)
	if err != nil {
		return nil, err
	}
	if seg == nil {
		return &tcpSender{conn: conn}, nil
	}
	return newShmSender(conn, seg), nil
}

// recvData reads an authenticated data connection from the left neighbour
// for the ring's lifetime: with Transport SHM it first offers shared memory.
func (r *Ring) recvData(conn *net.TCPConn) error {
	if r.cfg.Transport != SHM {
		return r.recvLoopTCP(conn)
	}
	seg, err := r.offerShm(conn)
	if err != nil {
		return err
	}
	if seg == nil {
		return r.recvLoopTCP(conn)
	}
	defer seg.close()
	return r.recvLoopShm(conn, seg)
}

// SharedMemory reports whether the payloads this rank sends to its right
// neighbour (send) and receives from its left neighbour (recv) travel
// through shared memory. Both are false until the links are set up, and
// always false unless Config.Transport is SHM.
func (r *Ring) SharedMemory() (send, recv bool) {
	return r.shmSend.Load(), r.shmRecv.Load()
}
