package control

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/ringtune/ringtune/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValidate(t *testing.T) {
	ok := []Msg{
		{V: Version, Type: TypeHello, Hello: &Hello{ID: "n", Nonce: make([]byte, 32)}},
		{V: Version, Type: TypeChallenge, Nonce: make([]byte, 32), Proof: make([]byte, 32)},
		{V: Version, Type: TypeAuth, Proof: make([]byte, 32)},
		{V: Version, Type: TypeStep, Gen: 1, Count: 8},
		{V: Version, Type: TypeGen, Gen: 2, World: &World{Generation: 2, Rank: 1, Peers: []string{"a:1", "b:1"}, IDs: []string{"a", "b"}}},
	}
	for _, m := range ok {
		if err := m.Validate(); err != nil {
			t.Errorf("%s: %v", m.Type, err)
		}
	}
	bad := map[string]Msg{
		"version":      {V: 99, Type: TypeHello, Hello: &Hello{ID: "n"}},
		"empty id":     {V: Version, Type: TypeHello, Hello: &Hello{Nonce: make([]byte, 32)}},
		"no nonce":     {V: Version, Type: TypeHello, Hello: &Hello{ID: "n"}},
		"short proof":  {V: Version, Type: TypeAuth, Proof: make([]byte, 8)},
		"no proof":     {V: Version, Type: TypeChallenge, Nonce: make([]byte, 32)},
		"no count":     {V: Version, Type: TypeStep, Gen: 1},
		"rank outside": {V: Version, Type: TypeGen, Gen: 2, World: &World{Generation: 2, Rank: 2, Peers: []string{"a:1"}, IDs: []string{"a"}}},
		"gen mismatch": {V: Version, Type: TypeGen, Gen: 3, World: &World{Generation: 2, Rank: 0, Peers: []string{"a:1"}, IDs: []string{"a"}}},
		"unknown":      {V: Version, Type: "nope"},
		"no pull":      {V: Version, Type: TypePull, Gen: 1},
		"bad pull":     {V: Version, Type: TypePull, Gen: 1, Pull: &Pull{Addr: "x:1", Kind: "model"}},
	}
	for name, m := range bad {
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCodecRejectsInvalid(t *testing.T) {
	var c jsonCodec
	b, err := c.Marshal(&Msg{V: Version, Type: TypeStep, Gen: 1})
	if err != nil {
		t.Fatal(err)
	}
	var m Msg
	if err := c.Unmarshal(b, &m); err == nil || !strings.Contains(err.Error(), "global count") {
		t.Fatalf("got %v", err)
	}
}

func TestCheckGenNamesBoth(t *testing.T) {
	err := CheckGen("node-7", 4, 3)
	if err == nil || !strings.Contains(err.Error(), "generation 3") || !strings.Contains(err.Error(), "generation is 4") || !strings.Contains(err.Error(), "node-7") {
		t.Fatalf("got %v", err)
	}
	if CheckGen("x", 2, 2) != nil {
		t.Fatal("same generation rejected")
	}
}

func TestStateRoundTrip(t *testing.T) {
	p, o := []float32{1.5, -2, 3}, []float32{0.25}
	gp, gop, n, err := DecodeState(EncodeState(p, o, 9))
	if err != nil || !slices.Equal(p, gp) || !slices.Equal(o, gop) || n != 9 {
		t.Fatalf("%v %v %d %v", gp, gop, n, err)
	}
	b := EncodeState(p, o, 9)
	if _, _, _, err := DecodeState(b[:len(b)-4]); err == nil {
		t.Fatal("truncated state accepted")
	}
}

func TestMetaLimit(t *testing.T) {
	if _, err := (Meta{ID: "n", Role: RoleNode, GRPC: "127.0.0.1:1"}).Encode(); err != nil {
		t.Fatal(err)
	}
	_, err := Meta{ID: strings.Repeat("x", 600), Role: RoleNode}.Encode()
	if err == nil || !strings.Contains(err.Error(), "node name") {
		t.Fatalf("got %v", err)
	}
	if got := StaticMeta(bytes.Repeat([]byte("x"), 600)).NodeMeta(MaxMeta); got != nil {
		t.Fatal("oversized meta published")
	}
}

func TestGossipKey(t *testing.T) {
	k, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	g, err := GossipKey(k)
	if err != nil || len(g) != 32 || bytes.Equal(g, k) {
		t.Fatalf("gossip key %x (%v)", g, err)
	}
	if _, err := GossipKey(auth.Key("short")); err == nil {
		t.Fatal("short key accepted")
	}
}
