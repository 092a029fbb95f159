// Command gonode is a ringtune node with the pure-Go trainer of package
// gotrainer, for cluster tests: gonode join --coordinator ... --key-file ...
// Exit codes: 0 the run ended normally (or the node left on SIGTERM/SIGINT),
// 1 any error, 70 a panic (agent.ExitCode).
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/internal/gotrainer"
	"github.com/ringtune/ringtune/node/agent"
)

func main() {
	root := &cobra.Command{Use: "gonode", SilenceUsage: true, SilenceErrors: true}
	factory := gotrainer.New
	// GONODE_STEP_DELAY slows every micro-batch down, so that tests can
	// kill a node while a run is in progress.
	if d, err := time.ParseDuration(os.Getenv("GONODE_STEP_DELAY")); err == nil && d > 0 {
		factory = func() (agent.Trainer, error) {
			t, err := gotrainer.New()
			return slow{t, d}, err
		}
	}
	// GONODE_STATE_DELAY slows WriteState down (it writes in 16 KiB pieces
	// and sleeps this long after each), so that tests can kill a node, or
	// the coordinator, while a state is being transferred.
	if d, err := time.ParseDuration(os.Getenv("GONODE_STATE_DELAY")); err == nil && d > 0 {
		inner := factory
		factory = func() (agent.Trainer, error) {
			t, err := inner()
			return slowState{t, d}, err
		}
	}
	// GONODE_PERTURB_AT_STEP=k is a test-only fault: after applying
	// committed step k (0-based) this node adds 1e-3 to one parameter, so
	// that its replica silently diverges from the others' and the
	// coordinator's digest check must catch it.
	if v := os.Getenv("GONODE_PERTURB_AT_STEP"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 0 {
			fmt.Fprintf(os.Stderr, "gonode: GONODE_PERTURB_AT_STEP=%q is not a step number\n", v)
			os.Exit(1)
		}
		inner := factory
		factory = func() (agent.Trainer, error) {
			t, err := inner()
			return &perturb{Trainer: t, at: k}, err
		}
	}
	// GONODE_FAIL_SETUP=msg is a test-only fault: setting up the model
	// fails with msg, as a real node's does on a model it cannot load.
	if msg := os.Getenv("GONODE_FAIL_SETUP"); msg != "" {
		inner := factory
		factory = func() (agent.Trainer, error) {
			t, err := inner()
			return failSetup{t, msg}, err
		}
	}
	root.AddCommand(agent.Command(factory))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gonode:", err)
		os.Exit(agent.ExitCode(err))
	}
}

type failSetup struct {
	agent.Trainer
	msg string
}

func (f failSetup) Setup(agent.Job) (int, error) { return 0, errors.New(f.msg) }

type slow struct {
	agent.Trainer
	d time.Duration
}

func (s slow) Accumulate(b *data.Batch) (float64, int, error) {
	time.Sleep(s.d)
	return s.Trainer.Accumulate(b)
}

// StateView forwards the inner trainer's view: slowing the steps down
// leaves the state readable off the agent's loop.
func (s slow) StateView() (agent.StateView, bool, error) { return viewOf(s.Trainer) }

// StateView forwards the inner trainer's view (the fault changes the state
// inside Apply, which the agent seals against readers).
func (p *perturb) StateView() (agent.StateView, bool, error) { return viewOf(p.Trainer) }

// viewOf is t's state view, or none (the agent's loop serves the state).
func viewOf(t agent.Trainer) (agent.StateView, bool, error) {
	if v, ok := t.(agent.StateViewer); ok {
		return v.StateView()
	}
	return agent.StateView{}, false, nil
}

// slowState has no StateView: its slowed WriteState, which tests kill
// nodes in the middle of, runs on the agent's loop.
type slowState struct {
	agent.Trainer
	d time.Duration
}

func (s slowState) WriteState(w io.Writer) error {
	return s.Trainer.WriteState(&slowWriter{w: w, d: s.d})
}

type slowWriter struct {
	w io.Writer
	d time.Duration
}

func (s *slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), 16<<10)
		m, err := s.w.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
		time.Sleep(s.d)
	}
	return n, nil
}

// perturb changes one parameter after applying step at.
type perturb struct {
	agent.Trainer
	at int
}

func (p *perturb) Apply(step, globalCount int) error {
	if err := p.Trainer.Apply(step, globalCount); err != nil || step != p.at {
		return err
	}
	// Through the state stream: parameter 0 is the float after the header.
	var st bytes.Buffer
	if err := p.WriteState(&st); err != nil {
		return err
	}
	b := st.Bytes()
	v := math.Float32frombits(binary.LittleEndian.Uint32(b[control.StateHeaderLen:]))
	binary.LittleEndian.PutUint32(b[control.StateHeaderLen:], math.Float32bits(v+1e-3))
	fmt.Fprintf(os.Stderr, "gonode: fault injected: parameter 0 perturbed after step %d\n", step)
	return p.ReadState(&st)
}
