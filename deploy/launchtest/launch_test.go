package launchtest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The hostfile every ssh test uses: comments, blank lines and both slot
// spellings.
const hostfile = `# two hosts through the test's sshd
node-a 2   # two slots

node-b slots=1
`

func writeHostfile(t *testing.T, e *launchEnv, text string) string {
	t.Helper()
	p := filepath.Join(e.dir, "hosts.txt")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// A full launch through sshd: the coordinator here, three nodes on two
// "hosts"; every process gets its arguments and a private copy of the key,
// output is streamed with host:slot prefixes and written to per-process logs,
// the launch exits with the coordinator's status once the nodes are done, and
// nothing is left behind.
func TestLaunchOverSSH(t *testing.T) {
	s := needSSHD(t)
	e := newEnv(t, "coordinator.exit_after=3s\ncoordinator.wait_nodes=3\nnode.exit_after=4s\n")
	hf := writeHostfile(t, e, hostfile)
	l := startLaunch(t, e.args(s, "--hostfile", hf)...)
	l.waitOutput(t, 60*time.Second, "node-a:0| stub node ready", "node-a:1| stub node ready", "node-b:0| stub node ready", "coordinator| stub coordinator ready")
	assertKeyNotInProcesses(t, e.key)
	code := l.wait(t, 90*time.Second)
	out := l.out.String()
	if code != 0 {
		t.Fatalf("launch exited %d, want 0 (the coordinator's status):\n%s", code, out)
	}

	// Arguments: the device per slot, a distinct name, the bind address of
	// the host ssh reaches, the coordinator's address and the config's label.
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`node-a:0\| stub node .*"join" "--coordinator" "127.0.0.1:17946" .*"--device" "cpu" "--bind" "127.0.0.1:7950" "--name" "node-a-0" "--label" "lt-label"`),
		regexp.MustCompile(`node-a:1\| stub node .*"--bind" "127.0.0.1:7951" "--name" "node-a-1"`),
		regexp.MustCompile(`node-b:0\| stub node .*"--bind" "127.0.0.2:7950" "--name" "node-b-0"`),
		regexp.MustCompile(`coordinator\| stub coordinator .*"--config" "` + regexp.QuoteMeta(e.config) + `" "--cluster.key_file" "[^"]+" "--cluster.bind" "127.0.0.1:17946"`),
	} {
		if !want.MatchString(out) {
			t.Errorf("output lacks %s", want)
		}
	}
	// Every process got the key in a 0600 file in a 0700 directory.
	keys := regexp.MustCompile(`(?m)^(\S+)\| stub \w+ key_file=\S+ key_mode=(\d+) dir_mode=(\d+) key_sha256=(\w+)$`).FindAllStringSubmatch(out, -1)
	if len(keys) != 4 {
		t.Fatalf("want 4 key reports (coordinator + 3 nodes), got %d:\n%s", len(keys), out)
	}
	for _, k := range keys {
		if k[2] != "0600" || k[3] != "0700" || k[4] != e.keySHA() {
			t.Errorf("%s: key file mode %s dir mode %s sha %s; want 0600, 0700, %s", k[1], k[2], k[3], k[4], e.keySHA())
		}
	}
	// Per-process logs hold the unprefixed lines, stdout and stderr.
	for _, name := range []string{"coordinator", "node-a:0", "node-a:1", "node-b:0"} {
		raw, err := os.ReadFile(filepath.Join(e.logs, name+".log"))
		if err != nil {
			t.Fatalf("log of %s: %v", name, err)
		}
		role := "node"
		if name == "coordinator" {
			role = "coordinator"
		}
		if !strings.HasPrefix(string(raw), "stub "+role+" pid=") || !strings.Contains(string(raw), "stub "+role+" ready") {
			t.Errorf("%s.log does not start with the process's own output:\n%s", name, raw)
		}
	}
	if _, err := os.Stat(e.state); !os.IsNotExist(err) {
		t.Errorf("state file %s left after the launch ended (%v)", e.state, err)
	}
	assertNothingLeft(t, e, s, keyDirs(out), 30*time.Second)
}

// A coordinator failing is the launch's status, and nodes that do not leave
// by themselves are stopped after the grace period.
func TestCoordinatorFailureStopsNodes(t *testing.T) {
	s := needSSHD(t)
	e := newEnv(t, "coordinator.exit_after=2s\ncoordinator.wait_nodes=2\ncoordinator.exit_code=3\n")
	start := time.Now()
	code, out := runLaunch(t, 30*time.Second, e.args(s, "--hosts", "node-a,node-b")...)
	if code != 3 {
		t.Fatalf("launch exited %d, want the coordinator's 3:\n%s", code, out)
	}
	if !strings.Contains(out, "coordinator exited with status 3") || !strings.Contains(out, "node-a:0| stub node got terminated") {
		t.Errorf("want the coordinator's status reported and the nodes stopped with TERM:\n%s", out)
	}
	// A hang guard, not a timing check: the output above shows that the
	// nodes were stopped after the grace period.
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("took %v; the nodes should be stopped 2s (--grace) after the coordinator", d)
	}
	assertNothingLeft(t, e, s, keyDirs(out), 30*time.Second)
}

// Ctrl-C (SIGINT to the launch's process group, as a terminal sends it)
// stops every process it started, KILLs those that ignore TERM after the
// grace period, and removes the key files.
func TestCtrlCStopsEverything(t *testing.T) {
	s := needSSHD(t)
	e := newEnv(t, "node.ignore_term=1\n")
	hf := writeHostfile(t, e, hostfile)
	l := startLaunch(t, e.args(s, "--hostfile", hf)...)
	l.waitOutput(t, 60*time.Second, "node-a:0| stub node ready", "node-a:1| stub node ready", "node-b:0| stub node ready", "coordinator| stub coordinator ready")
	if n := len(stubs(e, "node")); n != 3 {
		t.Fatalf("want 3 node processes running, found %d", n)
	}
	syscall.Kill(-l.cmd.Process.Pid, syscall.SIGINT)
	code := l.wait(t, 60*time.Second)
	out := l.out.String()
	if code != 130 {
		t.Errorf("launch exited %d after Ctrl-C, want 130:\n%s", code, out)
	}
	if !strings.Contains(out, "node-b:0| stub node ignoring terminated") {
		t.Errorf("the nodes were not sent TERM first:\n%s", out)
	}
	assertNothingLeft(t, e, s, keyDirs(out), 30*time.Second)
}

// --stop, from another shell, stops a running launch through its state file.
func TestStop(t *testing.T) {
	s := needSSHD(t)
	e := newEnv(t, "")
	l := startLaunch(t, e.args(s, "--hosts", "node-a:2,node-b")...)
	l.waitOutput(t, 60*time.Second, "node-a:1| stub node ready", "node-b:0| stub node ready", "coordinator| stub coordinator ready")
	// A second launch with the same state file is refused.
	code, out := runLaunch(t, 20*time.Second, e.args(s, "--hosts", "node-b")...)
	if code != 2 || !strings.Contains(out, "already running") || !strings.Contains(out, e.state) {
		t.Errorf("second launch: exit %d, want 2 naming the running launch's state file:\n%s", code, out)
	}
	code, out = runLaunch(t, 90*time.Second, "--stop", "--state-file", e.state)
	if code != 0 {
		t.Errorf("--stop exited %d:\n%s", code, out)
	}
	if c := l.wait(t, 90*time.Second); c != 130 {
		t.Errorf("stopped launch exited %d, want 130", c)
	}
	assertNothingLeft(t, e, s, keyDirs(l.out.String()), 30*time.Second)
	// Nothing to stop any more: a clear error naming the state file.
	code, out = runLaunch(t, 10*time.Second, "--stop", "--state-file", e.state)
	if code != 2 || !strings.Contains(out, e.state) {
		t.Errorf("--stop without a launch: exit %d, want 2 naming %s:\n%s", code, e.state, out)
	}
}

// A launcher killed with SIGKILL cannot clean up; the closed key pipes stop
// the processes on every host (and the local coordinator) anyway, whether
// only the launcher died or its whole process group (a closed terminal), and
// --stop then finds nothing left and removes what the launcher could not.
func TestKilledLauncherStopsHosts(t *testing.T) {
	for _, group := range []bool{false, true} {
		s := needSSHD(t)
		e := newEnv(t, "")
		l := startLaunch(t, e.args(s, "--hosts", "node-a,node-b")...)
		l.waitOutput(t, 60*time.Second, "node-a:0| stub node ready", "node-b:0| stub node ready", "coordinator| stub coordinator ready")
		dirs := keyDirs(l.out.String())
		runDir := stateValue(t, e.state, "rundir")
		if group {
			syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
		} else {
			syscall.Kill(l.cmd.Process.Pid, syscall.SIGKILL)
		}
		l.wait(t, 5*time.Second)
		assertNothingLeft(t, e, s, dirs, 15*time.Second)
		code, out := runLaunch(t, 90*time.Second, "--stop", "--state-file", e.state)
		if code != 0 {
			t.Errorf("--stop after a killed launcher exited %d:\n%s", code, out)
		}
		for _, p := range []string{e.state, runDir} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("--stop left %s", p)
			}
		}
	}
}

// --stop's own path, without a launcher: it signals the recorded process
// groups on each host over ssh.
func TestStopWithoutLauncher(t *testing.T) {
	s := needSSHD(t)
	e := newEnv(t, "")
	l := startLaunch(t, e.args(s, "--hosts", "node-a")...)
	l.waitOutput(t, 60*time.Second, "node-a:0| stub node ready", "coordinator| stub coordinator ready")
	// Stop the launcher without letting it clean up or close its pipes:
	// SIGSTOP, as a hung launcher would look.
	syscall.Kill(l.cmd.Process.Pid, syscall.SIGSTOP)
	t.Cleanup(func() { syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL) })
	raw, err := os.ReadFile(e.state)
	if err != nil {
		t.Fatal(err)
	}
	// Replace the launcher's pid by one that is not running, so --stop
	// must use its fallback.
	state := regexp.MustCompile(`(?m)^launcher \d+$`).ReplaceAllString(string(raw), "launcher 999999999")
	if err := os.WriteFile(e.state, []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runLaunch(t, 90*time.Second, "--stop", "--state-file", e.state)
	if code != 0 {
		t.Fatalf("--stop exited %d:\n%s", code, out)
	}
	if got := stubs(e, "node"); len(got) != 0 {
		t.Errorf("--stop left node processes: %v", got)
	}
	if got := stubs(e, "coordinator"); len(got) != 0 {
		t.Errorf("--stop left the coordinator: %v", got)
	}
}

// Preflight: an unreachable host and a missing binary are named, fast, and
// nothing is started on the hosts that were fine.
func TestPreflightNamesBadHosts(t *testing.T) {
	s := needSSHD(t)
	e := newEnv(t, "")
	start := time.Now()
	code, out := runLaunch(t, 30*time.Second, e.args(s, "--hosts", "node-a,dead,node-b")...)
	if code != 2 || !strings.Contains(out, "host dead: cannot connect over ssh") || strings.Contains(out, "host node-a") {
		t.Errorf("unreachable host: exit %d, want 2 naming only host dead:\n%s", code, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("preflight took %v; an unreachable host must fail within --connect-timeout", d)
	}
	if strings.Contains(out, "stub") || len(marked(e.bin)) != 0 {
		t.Errorf("something was started despite the failed preflight:\n%s", out)
	}

	missing := filepath.Join(e.dir, "nonexistent")
	args := e.args(s, "--hosts", "node-a,node-b", "--bin-dir", missing) // the later --bin-dir wins
	code, out = runLaunch(t, 30*time.Second, args...)
	for _, want := range []string{"host node-a: missing binary: " + missing + "/node", "host node-b: missing binary", "this machine: missing binary: " + missing + "/coordinator"} {
		if code != 2 || !strings.Contains(out, want) {
			t.Errorf("missing binary: exit %d, want 2 and %q:\n%s", code, want, out)
		}
	}
	assertNothingLeft(t, e, s, nil, 5*time.Second)
}

// --dry-run prints the commands (GPU devices by slot, ssh options) without
// connecting or starting anything.
func TestDryRun(t *testing.T) {
	e := newEnv(t, "")
	hf := writeHostfile(t, e, "gpu1 2\ngpu2\n")
	code, out := runLaunch(t, 10*time.Second, "--hostfile", hf, "--config", e.config, "--bin-dir", "/opt/rt/bin",
		"--coordinator-addr", "10.0.0.1:7946", "--ssh-port", "2222", "--state-file", e.state, "--dry-run")
	if code != 0 {
		t.Fatalf("--dry-run exited %d:\n%s", code, out)
	}
	for _, want := range []string{
		"/opt/rt/bin/coordinator --config " + e.config + " --cluster.key_file @KEYFILE@ --cluster.bind 10.0.0.1:7946",
		"-p 2222 gpu1 /opt/rt/bin/node join --coordinator 10.0.0.1:7946 --key-file @KEYFILE@ --device cuda:0 --bind gpu1:7950 --name gpu1-0 --label lt-label",
		"gpu1 /opt/rt/bin/node join --coordinator 10.0.0.1:7946 --key-file @KEYFILE@ --device cuda:1 --bind gpu1:7951 --name gpu1-1",
		"gpu2 /opt/rt/bin/node join --coordinator 10.0.0.1:7946 --key-file @KEYFILE@ --device cuda:0 --bind gpu2:7950 --name gpu2-0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, e.key) {
		t.Errorf("dry run printed the key")
	}
}

// Bad arguments and hostfiles are refused before anything runs, with the
// file and line or the option named.
func TestBadInput(t *testing.T) {
	e := newEnv(t, "")
	cases := []struct {
		name, hosts string
		args        []string
		want        []string
	}{
		{"slots not a number", "node-a two\n", nil, []string{"hosts.txt:1", "node-a", "positive number", "'two'"}},
		{"zero slots", "# c\nnode-a 0\n", nil, []string{"hosts.txt:2", "positive number"}},
		{"too many fields", "node-a 2 3\n", nil, []string{"hosts.txt:1", "expected 'host [slots]'"}},
		{"duplicate", "node-a\nnode-a 2\n", nil, []string{"hosts.txt:2", "'node-a' is listed twice"}},
		{"empty", "# nothing\n\n", nil, []string{"names no hosts"}},
		{"no hostfile", "", []string{"--hostfile", "/nonexistent/hosts"}, []string{"/nonexistent/hosts cannot be read"}},
		{"no hosts", "", []string{}, []string{"no hosts: pass --hostfile FILE or --hosts"}},
		{"no config", "", []string{"--hosts", "a", "--config", ""}, []string{"--config needs a value"}},
		{"missing config", "", []string{"--hosts", "a", "--config", "/nonexistent/c.yaml"}, []string{"config /nonexistent/c.yaml cannot be read"}},
		{"bad option", "", []string{"--hosts", "a", "--frob"}, []string{"unknown option '--frob'", "--help"}},
		{"bad grace", "", []string{"--hosts", "a", "--grace", "soon"}, []string{"--grace must be a whole number", "'soon'"}},
		{"bad inline slots", "", []string{"--hosts", "a:x"}, []string{"--hosts", "'a'", "'x'"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"--config", e.config, "--state-file", e.state}
			if c.hosts != "" {
				args = append(args, "--hostfile", writeHostfile(t, e, c.hosts))
			}
			args = append(args, c.args...)
			code, out := runLaunch(t, 10*time.Second, args...)
			if code != 2 {
				t.Errorf("exit %d, want 2:\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("message lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
