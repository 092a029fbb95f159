package control

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/ringtune/ringtune/auth"
)

// MaxMeta is memberlist's limit on node metadata (it panics above it).
const MaxMeta = memberlist.MetaMaxSize

// Roles in node metadata.
const (
	RoleCoordinator = "coordinator"
	RoleNode        = "node"
)

// Meta is what a member gossips about itself.
type Meta struct {
	ID      string `json:"id"`
	Role    string `json:"role"`
	GRPC    string `json:"grpc"` // control (coordinator) or ring (node) address
	Device  string `json:"device,omitempty"`
	Version string `json:"ver,omitempty"`
	// TLS is the coordinator's TLS mode, which nodes follow: TLSDerived,
	// TLSFiles, or empty for none. Gossip is encrypted with the cluster key,
	// so only a key holder can announce it.
	TLS string `json:"tls,omitempty"`
}

// TLS modes in the coordinator's metadata.
const (
	TLSDerived = "derived" // certificates derived from the cluster key
	TLSFiles   = "files"   // certificates from cluster.tls.{cert,key,ca}
)

// Encode returns m as JSON, or an error naming the field to shorten when it
// exceeds MaxMeta bytes.
func (m Meta) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMeta {
		return nil, fmt.Errorf("node metadata is %d bytes, memberlist allows %d: shorten the node name (%d bytes) or device (%d bytes)", len(b), MaxMeta, len(m.ID), len(m.Device))
	}
	return b, nil
}

// DecodeMeta parses gossip metadata.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("node metadata: %w", err)
	}
	return m, nil
}

// GossipKey derives memberlist's AES-256 key from the cluster key, so that
// the key file's bytes are never used directly for two purposes (auth
// derives its MAC key the same way with another label).
func GossipKey(k auth.Key) ([]byte, error) {
	if err := k.Validate(); err != nil {
		return nil, err
	}
	return hkdf.Key(sha256.New, k, nil, "ringtune memberlist v1", 32)
}

// GossipConfig is the memberlist setup both sides share.
type GossipConfig struct {
	Name      string
	Bind      string // host:port; port 0 picks one
	Advertise string // host:port or empty
	Label     string
	Key       auth.Key
	Delegate  memberlist.Delegate
	Events    memberlist.EventDelegate
	Logger    io.Writer // nil discards memberlist's chatter
}

// NewMemberlist creates the gossip member. On loopback addresses it uses
// memberlist's local profile (fast probes and push/pull), elsewhere the LAN
// profile.
func NewMemberlist(c GossipConfig) (*memberlist.Memberlist, error) {
	host, port, err := splitHostPort(c.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address %q: %w", c.Bind, err)
	}
	var mc *memberlist.Config
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.PushPullInterval = 2 * time.Second
		mc.GossipInterval = 50 * time.Millisecond
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = c.Name
	// A node restarted under its name (a pod of a StatefulSet, a killed
	// node started again) usually comes back on another port. memberlist
	// refuses a dead member's name from a new address until the dead entry
	// is reaped (15-30 s) unless reclaiming is on; a live member's name
	// stays protected either way.
	mc.DeadNodeReclaimTime = time.Nanosecond
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertisePort = port
	if c.Advertise != "" {
		ah, ap, err := splitHostPort(c.Advertise)
		if err != nil {
			return nil, fmt.Errorf("gossip advertise address %q: %w", c.Advertise, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	mc.Label = c.Label
	mc.Delegate = c.Delegate
	mc.Events = c.Events
	if c.Logger == nil {
		c.Logger = io.Discard
	}
	mc.Logger = log.New(c.Logger, "memberlist: ", log.LstdFlags)
	gk, err := GossipKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	mc.SecretKey = gk
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip on %s: %w", c.Bind, err)
	}
	return ml, nil
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return h, n, nil
}

// StaticMeta is a memberlist.Delegate that only publishes fixed metadata.
type StaticMeta []byte

// NodeMeta implements memberlist.Delegate.
func (s StaticMeta) NodeMeta(limit int) []byte {
	if len(s) > limit {
		return nil // Meta.Encode already refused this; never panic memberlist
	}
	return s
}

// NotifyMsg implements memberlist.Delegate.
func (StaticMeta) NotifyMsg([]byte) {}

// GetBroadcasts implements memberlist.Delegate.
func (StaticMeta) GetBroadcasts(int, int) [][]byte { return nil }

// LocalState implements memberlist.Delegate.
func (StaticMeta) LocalState(bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate.
func (StaticMeta) MergeRemoteState([]byte, bool) {}

// FirstPrivateIP is the first non-loopback IPv4 address of this host, or ""
// when it has none: what a process bound to 0.0.0.0 advertises to peers.
func FirstPrivateIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return ""
}
