package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringtune/ringtune/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewValidates(t *testing.T) {
	k, _ := auth.GenerateKey()
	f := func() (Trainer, error) { return nil, nil }
	if _, err := New(Config{Key: k}, f); err == nil || !strings.Contains(err.Error(), "--coordinator") {
		t.Fatalf("missing coordinator: %v", err)
	}
	if _, err := New(Config{Coordinator: "x:1", Key: auth.Key("short")}, f); err == nil || !strings.Contains(err.Error(), "key") {
		t.Fatalf("short key: %v", err)
	}
	if _, err := New(Config{Coordinator: "x:1", Key: k}, nil); err == nil {
		t.Fatal("nil factory accepted")
	}
}

// TestJoinGivesUp: with nobody at the coordinator's address the agent stops
// at its join deadline with an error naming the address, and leaves no
// goroutine behind.
func TestJoinGivesUp(t *testing.T) {
	k, _ := auth.GenerateKey()
	a, err := New(Config{Coordinator: "127.0.0.1:1", Key: k, Bind: "127.0.0.1:0", Name: "lonely", CacheDir: t.TempDir(), JoinTimeout: 500 * time.Millisecond}, func() (Trainer, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("got %v", err)
	}
}
