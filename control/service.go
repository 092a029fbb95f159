package control

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"

	"github.com/ringtune/ringtune/auth"
)

// CodecName is the gRPC content-subtype of control messages
// ("application/grpc+ringtune-json"): JSON, because the messages are few
// and small next to the ring's traffic, and JSON keeps them readable and
// versionable without generated code. Large payloads (state, files) never
// travel here: they use the bulk plane (package bulk).
const CodecName = "ringtune-json"

// MaxMsg is the largest control message accepted: a step's batches (gRPC's
// 4 MiB default could refuse them).
const MaxMsg = 64 << 20

func init() { encoding.RegisterCodec(jsonCodec{}) }

type jsonCodec struct{}

func (jsonCodec) Name() string { return CodecName }

func (jsonCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

func (jsonCodec) Unmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("control: decode message: %w", err)
	}
	if m, ok := v.(*Msg); ok {
		if err := m.Validate(); err != nil {
			return fmt.Errorf("control: invalid %q message: %w", m.Type, err)
		}
	}
	return nil
}

const (
	serviceName   = "ringtune.control.Coordinator"
	sessionName   = "Session"
	SessionMethod = "/" + serviceName + "/" + sessionName // full method name, for auth
)

// Stream is one side of a session: Send and Recv of Msg values.
type Stream interface {
	Send(*Msg) error
	Recv() (*Msg, error)
	Context() context.Context
}

// SessionHandler serves one node's session; it returns when the session is
// over (the error becomes the stream's status).
type SessionHandler func(Stream) error

type serverStream struct{ grpc.ServerStream }

func (s serverStream) Send(m *Msg) error { return s.SendMsg(m) }
func (s serverStream) Recv() (*Msg, error) {
	m := new(Msg)
	if err := s.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

type handlerIface interface{ session(Stream) error }

type handlerFunc SessionHandler

func (h handlerFunc) session(s Stream) error { return h(s) }

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*handlerIface)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    sessionName,
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(handlerIface).session(serverStream{ss})
		},
	}},
	Metadata: "control (JSON messages, see package doc)",
}

// Register serves sessions on reg with h.
func Register(reg grpc.ServiceRegistrar, h SessionHandler) {
	reg.RegisterService(&serviceDesc, handlerFunc(h))
}

// KeepaliveTime is how long a control connection may stay silent before
// either side pings the other, and KeepaliveTimeout how long a ping may go
// unanswered before the connection is closed. A spare or an idle node gets
// no message for as long as the world runs without it, so without pings a
// coordinator that froze (SIGSTOP, a hung host) or vanished behind a
// network partition would leave it waiting forever; with them its session
// ends within KeepaliveTime+KeepaliveTimeout and it rejoins until its
// --rejoin-timeout, as after any lost session. The coordinator pings too,
// so a frozen idle node's session ends even when gossip is slow to say so.
// gRPC's client will not ping more often than every 10 s.
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 10 * time.Second
)

// keepaliveMinTime is the shortest ping interval the server tolerates
// from a node (gRPC's default of 5 minutes would make the server close
// every node's connection with "too many pings").
const keepaliveMinTime = 5 * time.Second

// ServerOptions are the options of the coordinator's control server:
// single-use token authentication with key (as the ring's), TLS with
// tlsConf when it is not nil (see auth.DerivedTLS), the raised message
// limit and the keepalive. Every service registered on the server inherits
// them.
func ServerOptions(key auth.Key, tlsConf *tls.Config) []grpc.ServerOption {
	return append(auth.ServerOptions(key, tlsConf), grpc.MaxRecvMsgSize(MaxMsg), grpc.MaxSendMsgSize(MaxMsg),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}))
}

// Dial connects to the coordinator's control server at addr with key, over
// TLS with tlsConf when it is not nil (it must be when the server has TLS).
func Dial(addr string, key auth.Key, tlsConf *tls.Config) (*grpc.ClientConn, error) {
	opts := append(auth.DialOptions(key, tlsConf),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMsg), grpc.MaxCallSendMsgSize(MaxMsg), grpc.CallContentSubtype(CodecName)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
	)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("control: dial coordinator %s: %w", addr, err)
	}
	return cc, nil
}

type clientStream struct{ grpc.ClientStream }

func (s clientStream) Send(m *Msg) error { return s.SendMsg(m) }
func (s clientStream) Recv() (*Msg, error) {
	m := new(Msg)
	if err := s.RecvMsg(m); err != nil {
		return nil, err
	}
	return m, nil
}

// CloseSend ends the node's side of the session.
func (s clientStream) CloseSend() error { return s.ClientStream.CloseSend() }

// OpenSession opens the node's session stream on cc; ctx bounds its life.
func OpenSession(ctx context.Context, cc *grpc.ClientConn) (Stream, error) {
	cs, err := cc.NewStream(ctx, &serviceDesc.Streams[0], SessionMethod)
	if err != nil {
		return nil, fmt.Errorf("control: open session: %w", err)
	}
	return clientStream{cs}, nil
}
