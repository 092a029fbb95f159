package machine

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of the scenario scripts in testdata/")

// TestScenarios runs every script in testdata/, in the style of the
// coordinator machine's: each block is a command, "----", and the
// machine's expected output (its replies, work and notes, then its phase,
// the steps it holds, its generation and its deadline). Run with -rewrite
// to regenerate the expectations after a deliberate change, and read the
// diff.
//
// Commands: config commit=N rejoin=N [leave=N]; open; connectfailed WHY;
// lost WHY; term; tick [N]; fail WHY; msg KIND [gen= req= step= rank=
// world= applied= count= of= error=".."] [digest]; done [applied= sum=
// payload= commit= error=".."] [fatal], which answers the busy work.
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
	line    int
	comment []string
	cmd     string
	want    string
}

func parseScript(t *testing.T, path string) []block {
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	ln := 0
	var blocks []block
	var cur *block
	var comment, want []string
	inWant := false
	flush := func() {
		if cur != nil {
			cur.want = strings.Join(want, "\n")
			blocks = append(blocks, *cur)
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
		case strings.HasPrefix(l, "#"):
			comment = append(comment, l) // it explains the next command
		case l == "":
		case l == "----":
			if cur == nil {
				t.Fatalf("%s:%d: ---- without a command", path, ln)
			}
			inWant = true
		default:
			if cur != nil {
				t.Fatalf("%s:%d: command %q follows %q without ----", path, ln, l, cur.cmd)
			}
			cur = &block{line: ln, cmd: l, comment: comment}
			comment = nil
		}
	}
	flush()
	return blocks
}

// fields splits a command line at spaces, keeping quoted values whole.
func fields(s string) []string {
	var out []string
	var b strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			b.WriteRune(r)
		case r == ' ' && !quoted:
			if b.Len() > 0 {
				out = append(out, b.String())
				b.Reset()
			}
		default:
			b.WriteRune(r)
		}
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// args parses key=value arguments (a bare word is key=true).
func args(t *testing.T, where string, fs []string) map[string]string {
	a := map[string]string{}
	for _, f := range fs {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			a[f] = "true"
			continue
		}
		if strings.HasPrefix(v, `"`) {
			u, err := strconv.Unquote(v)
			if err != nil {
				t.Fatalf("%s: %s: %v", where, f, err)
			}
			v = u
		}
		a[k] = v
	}
	return a
}

func num(t *testing.T, where string, a map[string]string, k string, def int64) int64 {
	v, ok := a[k]
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("%s: %s=%q is not a number", where, k, v)
	}
	return n
}

func state(m *Machine) string {
	gen, rank := m.Generation()
	s := fmt.Sprintf("= %s held=%d gen=%d", m.Phase(), m.Held(), gen)
	if gen > 0 {
		s += fmt.Sprintf(" rank=%d", rank)
	}
	if dl, ok := m.Deadline(); ok {
		s += fmt.Sprintf(" deadline=%d", dl)
	}
	if o, why := m.Outcome(); o != Running {
		s += fmt.Sprintf(" outcome=%s", [...]string{"running", "finished", "left", "failure", "sessionlost"}[o])
		if why != "" {
			s += fmt.Sprintf(" why=%q", why)
		}
	}
	return s
}

func runScript(t *testing.T, path string) {
	blocks := parseScript(t, path)
	var m *Machine
	var busy uint64
	var out strings.Builder
	failed := false
	for i, b := range blocks {
		where := fmt.Sprintf("%s:%d", path, b.line)
		f := fields(b.cmd)
		a := args(t, where, f[1:])
		if m == nil && f[0] != "config" {
			var err error
			if m, err = New(Config{CommitTicks: 10, RejoinTicks: 20}); err != nil {
				t.Fatal(err)
			}
		}
		var ev *Event
		switch f[0] {
		case "config":
			var err error
			m, err = New(Config{CommitTicks: num(t, where, a, "commit", 10), RejoinTicks: num(t, where, a, "rejoin", 20), LeaveTicks: num(t, where, a, "leave", 0)})
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
		case "open":
			ev = &Event{Kind: Open}
		case "term":
			ev = &Event{Kind: Term}
		case "connectfailed", "lost", "fail":
			k := map[string]EventKind{"connectfailed": ConnectFailed, "lost": Lost, "fail": Fail}[f[0]]
			ev = &Event{Kind: k, Error: strings.Join(f[1:], " ")}
		case "tick":
			n := 1
			if len(f) > 1 {
				n, _ = strconv.Atoi(f[1])
			}
			for range n - 1 {
				m.Step(Event{Kind: Tick})
			}
			ev = &Event{Kind: Tick}
		case "msg":
			var k Kind
			for kk, name := range kindNames {
				if name == f[1] {
					k = kk
				}
			}
			if k == 0 {
				t.Fatalf("%s: unknown kind %q", where, f[1])
			}
			a = args(t, where, f[2:])
			msg := Msg{Kind: k, Gen: uint64(num(t, where, a, "gen", 0)), Req: uint64(num(t, where, a, "req", 0)), Step: int(num(t, where, a, "step", 0)),
				Rank: int(num(t, where, a, "rank", 0)), World: int(num(t, where, a, "world", 0)), Applied: int(num(t, where, a, "applied", 0)),
				Count: int(num(t, where, a, "count", 0)), PullStep: int(num(t, where, a, "of", 0)), Digest: a["digest"] == "true", Error: a["error"]}
			ev = &Event{Kind: Message, Msg: &msg}
		case "done":
			ev = &Event{Kind: WorkDone, ID: busy, Applied: int(num(t, where, a, "applied", 0)), Sum: a["sum"], Error: a["error"],
				Fatal: a["fatal"] == "true", CommitTicks: num(t, where, a, "commit", 0)}
			if p, ok := a["payload"]; ok {
				ev.Payload = p
			}
		default:
			t.Fatalf("%s: unknown command %q", where, f[0])
		}
		if ev != nil {
			m.Step(*ev)
		}
		rd := m.Ready()
		m.Advance()
		for _, w := range rd.Work {
			if w.ID > 0 {
				busy = w.ID
			}
		}
		got := strings.TrimSuffix(render(rd), "\n")
		if got != "" {
			got += "\n"
		}
		got += state(m)
		if i > 0 {
			out.WriteString("\n")
		}
		for _, c := range b.comment {
			out.WriteString(c + "\n")
		}
		out.WriteString(b.cmd + "\n----\n" + got + "\n")
		if !*rewrite && got != b.want && !failed {
			failed = true
			t.Errorf("%s: %s\ngot:\n%s\nwant:\n%s", where, b.cmd, got, b.want)
		}
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
