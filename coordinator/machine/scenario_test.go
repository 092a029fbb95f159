package machine

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/control"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of the scenario scripts in testdata/")

// TestScenarios runs every script in testdata/: each block is a command,
// "----", and the machine's expected output (the messages it sends, the
// actions it asks for, its notes, then its phase). Run with -rewrite to
// regenerate the expectations after a deliberate change, and read the diff.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario scripts in testdata/ (%v)", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScript(t, f) })
	}
}

type block struct {
	line int
	cmd  string
	want string
}

func parseScript(t *testing.T, path string) []block {
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var out []block
	sc := bufio.NewScanner(fh)
	ln := 0
	var cur *block
	inWant := false
	var want []string
	flush := func() {
		if cur != nil {
			cur.want = strings.Join(want, "\n")
			out = append(out, *cur)
		}
		cur, inWant, want = nil, false, nil
	}
	for sc.Scan() {
		ln++
		l := sc.Text()
		switch {
		case inWant && l == "":
			flush()
		case inWant:
			want = append(want, l)
		case l == "" || strings.HasPrefix(l, "#"):
		case l == "----":
			if cur == nil {
				t.Fatalf("%s:%d: ---- without a command", path, ln)
			}
			inWant = true
		default:
			if cur != nil {
				t.Fatalf("%s:%d: command %q follows %q without ----", path, ln, l, cur.cmd)
			}
			cur = &block{line: ln, cmd: l}
		}
	}
	flush()
	return out
}

// harness drives a machine from script commands.
type harness struct {
	m       *Machine
	session map[string]uint64
	// reqs holds each node's last request of each kind not yet answered
	// by the answer command.
	reqs map[string]map[Kind]Msg
	// applied is what each node holds, as the messages say: set up,
	// loaded, committed.
	applied map[string]int
	next    uint64
}

func runScript(t *testing.T, path string) {
	blocks := parseScript(t, path)
	h := &harness{session: map[string]uint64{}, reqs: map[string]map[Kind]Msg{}, applied: map[string]int{}}
	var b strings.Builder
	changed := false
	for _, bl := range blocks {
		got, err := h.do(bl.cmd)
		if err != nil {
			t.Fatalf("%s:%d: %s: %v\noutput so far:\n%s", path, bl.line, bl.cmd, err, b.String())
		}
		if got != bl.want {
			changed = true
			if !*rewrite {
				t.Errorf("%s:%d: %s\n got:\n%s\nwant:\n%s", path, bl.line, bl.cmd, got, bl.want)
			}
		}
		fmt.Fprintf(&b, "%s\n----\n%s\n\n", bl.cmd, got)
	}
	if *rewrite && changed {
		// Keep the leading comment block.
		src, _ := os.ReadFile(path)
		var head strings.Builder
		for _, l := range strings.Split(string(src), "\n") {
			if !strings.HasPrefix(l, "#") {
				break
			}
			head.WriteString(l + "\n")
		}
		if head.Len() > 0 {
			head.WriteString("\n")
		}
		if err := os.WriteFile(path, []byte(head.String()+b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func kv(args []string) map[string]string {
	out := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		out[k] = v
	}
	return out
}

func atoi(s string, def int) int {
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(fmt.Sprintf("bad number %q", s))
	}
	return n
}

func (h *harness) do(cmd string) (string, error) {
	f := strings.Fields(cmd)
	a := kv(f[1:])
	if f[0] == "config" {
		c := Config{MinNodes: atoi(a["min"], 1), MaxNodes: atoi(a["max"], 0), Samples: atoi(a["samples"], 8), GlobalBatch: atoi(a["batch"], 4),
			Epochs: atoi(a["epochs"], 1), MaxSteps: atoi(a["steps"], 0), DigestEvery: atoi(a["digest"], 0), EvalEvery: atoi(a["eval_every"], 0),
			HasEval: a["eval"] == "true", CheckpointEvery: atoi(a["ckpt"], 0), CheckpointBackground: a["bgckpt"] == "true", Resumed: atoi(a["resumed"], -1), MaxAborts: atoi(a["aborts"], 0),
			SettleTicks: int64(atoi(a["settle"], 0)), WaitTicks: int64(atoi(a["wait"], 100)), FormTicks: 10, SyncTicks: 10, StepTicks: 10,
			EvalTicks: 10, CheckpointTicks: 10, ExportTicks: 10, DrainTicks: 10}
		m, err := New(c)
		if err != nil {
			return "", err
		}
		h.m = m
		return h.flush(), nil
	}
	if h.m == nil {
		return "", fmt.Errorf("config first")
	}
	switch f[0] {
	case "join":
		id := f[1]
		h.next++
		s := uint64(atoi(a["session"], int(h.next)))
		ring := a["ring"]
		if ring == "" {
			ring = fmt.Sprintf("%s.r%d", id, s)
		}
		h.m.Step(Event{Kind: Join, Node: id, Session: s, Ring: ring, Applied: atoi(a["applied"], -1)})
		if !slices.ContainsFunc(h.m.Ready().Actions, func(a Action) bool { return a.Kind == Drop && a.Session == s }) {
			h.session[id] = s // a refused session is not the node's
		}
	case "lost":
		id := f[1]
		s := h.session[id]
		if v, ok := a["session"]; ok {
			s = uint64(atoi(v, 0))
		}
		if s == h.session[id] {
			delete(h.reqs, id) // a lost node answers nothing more
		}
		h.m.Step(Event{Kind: Lost, Node: id, Session: s, Ring: a["ring"]})
	case "leave":
		h.m.Step(Event{Kind: Leave, Node: f[1], Session: h.session[f[1]]})
	case "tick":
		for i := 0; i < atoi(a["n"], 1); i++ {
			h.m.Step(Event{Kind: Tick})
		}
	case "done":
		h.m.Step(Event{Kind: ActionDone, Req: uint64(atoi(a["req"], 0)), Error: a["error"], Fatal: a["fatal"] == "true"})
	case "msg":
		k, ok := ParseKind(f[2])
		if !ok {
			return "", fmt.Errorf("unknown kind %q", f[2])
		}
		msg := &Msg{Kind: k, Node: f[1], Session: h.session[f[1]], Gen: uint64(atoi(a["gen"], 0)), Req: uint64(atoi(a["req"], 0)),
			Step: atoi(a["step"], 0), Applied: atoi(a["applied"], 0), Sum: a["sum"], Error: a["error"]}
		if v, ok := a["session"]; ok {
			msg.Session = uint64(atoi(v, 0))
		}
		h.fill(msg, atoi(a["count"], 0))
		if k == SetUp || k == Joined {
			h.applied[msg.Node] = msg.Applied
		}
		h.m.Step(Event{Kind: Message, Msg: msg})
	case "answer":
		// Every request of the last output that expects KIND gets it, from
		// the nodes named by only= (default: all), echoing gen, req, step.
		k, ok := ParseKind(f[1])
		if !ok {
			return "", fmt.Errorf("unknown kind %q", f[1])
		}
		only := map[string]bool{}
		if v := a["only"]; v != "" {
			for _, id := range strings.Split(v, ",") {
				only[id] = true
			}
		}
		var msgs []*Msg
		var nodes []string
		for id := range h.reqs {
			nodes = append(nodes, id)
		}
		sort.Strings(nodes)
		for _, id := range nodes {
			if len(only) > 0 && !only[id] {
				continue
			}
			var req Msg
			found := false
			for rk, r := range h.reqs[id] {
				if replyTo[rk] == k || (k == Failed && rk == Step) {
					req, found = r, true
					delete(h.reqs[id], rk)
				}
			}
			if !found {
				continue
			}
			msg := &Msg{Kind: k, Node: req.Node, Session: h.session[req.Node], Gen: req.Gen, Req: req.Req, Step: req.Step,
				Applied: atoi(a["applied"], h.applied[req.Node]), Sum: a["sum"], Error: a["error"]}
			if k == Loaded {
				msg.Step = req.Pull.Step
				if msg.Error == "" {
					h.applied[req.Node] = msg.Step
				}
			}
			if k == Digest {
				msg.Step = req.Step + 1
			}
			if k == Reduced {
				msg.Count = share(req.Count, req.World, req.Rank)
			}
			h.fill(msg, msg.Count)
			msgs = append(msgs, msg)
		}
		if len(msgs) == 0 {
			return "", fmt.Errorf("no outstanding request expects %s", k)
		}
		for _, msg := range msgs {
			h.m.Step(Event{Kind: Message, Msg: msg})
		}
	default:
		return "", fmt.Errorf("unknown command %q", f[0])
	}
	return h.flush(), nil
}

// replyTo maps a request kind to the reply kind it expects.
var replyTo = map[Kind]Kind{Job: SetUp, Gen: Joined, Pull: Loaded, Step: Reduced, Commit: Digest, Eval: EvalRes, Export: Exported}

func share(count, world, rank int) int {
	if world == 0 {
		return 0
	}
	n := count / world
	if rank < count%world {
		n++
	}
	return n
}

func (h *harness) fill(msg *Msg, count int) {
	switch msg.Kind {
	case Reduced:
		msg.Reduced = &control.Reduced{Count: count, Samples: count}
	case EvalRes:
		msg.Eval = &control.EvalSums{Count: 1}
	case Exported:
		msg.Files = []control.FileInfo{{Name: "model.safetensors"}}
	}
}

func (h *harness) flush() string {
	rd := h.m.Ready()
	h.m.Advance()
	for _, m := range rd.Msgs {
		if m.Kind == Commit {
			h.applied[m.Node] = m.Step + 1
		}
		if replyTo[m.Kind] != 0 && (m.Kind != Commit || m.Digest) {
			if h.reqs[m.Node] == nil {
				h.reqs[m.Node] = map[Kind]Msg{}
			}
			h.reqs[m.Node][m.Kind] = m
		}
	}
	var lines []string
	for _, m := range rd.Msgs {
		lines = append(lines, "send "+m.String())
	}
	for _, a := range rd.Actions {
		lines = append(lines, "act "+a.String())
	}
	for _, n := range rd.Notes {
		lines = append(lines, "note "+n)
	}
	dl, _ := h.m.Deadline()
	st := fmt.Sprintf("= %s gen=%d applied=%d deadline=%d", h.m.Phase(), h.m.gen, h.m.Applied(), dl)
	if h.m.Phase() == Done {
		code, err := h.m.Outcome()
		st = fmt.Sprintf("= done code=%d", code)
		if err != nil {
			st += " err=" + err.Error()
		}
	}
	return strings.Join(append(lines, st), "\n")
}
