package launchtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// slurmCluster is a real one-machine Slurm (munged, slurmctld, slurmd) in a
// private directory on free ports, reached through SLURM_CONF.
type slurmCluster struct {
	dir, conf, host string
	daemons         []*exec.Cmd
}

// needSlurm starts Slurm for one test, installing Debian's slurmctld,
// slurmd, slurm-client and munge when missing and running as root. slurmd
// must run as root to start jobs, so other users skip.
func needSlurm(t *testing.T) *slurmCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the Slurm test runs slurmd, which needs root; run as root (it installs the Debian packages slurmctld slurmd slurm-client munge if missing)")
	}
	if _, err := exec.LookPath("slurmd"); err != nil {
		if _, err := exec.LookPath("apt-get"); err != nil {
			t.Skip("Slurm is not installed and there is no apt-get: install slurmctld, slurmd, slurm-client and munge")
		}
		install := exec.Command("apt-get", "install", "-y", "-q", "--no-install-recommends", "slurmctld", "slurmd", "slurm-client", "munge")
		install.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := install.CombinedOutput(); err != nil {
			t.Fatalf("install Slurm (apt-get install slurmctld slurmd slurm-client munge): %v\n%s", err, out)
		}
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "launchtest-slurm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// munged refuses a socket directory that others cannot traverse.
	for _, d := range []string{"state", "spool", "munge", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(dir, 0o755)
	key := make([]byte, 1024)
	if f, err := os.Open("/dev/urandom"); err == nil {
		f.Read(key)
		f.Close()
	}
	if err := os.WriteFile(filepath.Join(dir, "munge", "munge.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	ctld, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	slurmd, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &slurmCluster{dir: dir, conf: filepath.Join(dir, "slurm.conf"), host: host}
	// proctrack/linuxproc and task/none: no cgroups, which a container
	// (CI) may not delegate.
	conf := fmt.Sprintf(`ClusterName=launchtest
SlurmctldHost=%[1]s(127.0.0.1)
SlurmctldPort=%[2]d
SlurmdPort=%[3]d
AuthType=auth/munge
AuthInfo=socket=%[4]s/munge/sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=%[4]s/state
SlurmdSpoolDir=%[4]s/spool
SlurmctldPidFile=%[4]s/slurmctld.pid
SlurmdPidFile=%[4]s/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
InactiveLimit=0
KillWait=5
NodeName=%[1]s NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
`, host, ctld, slurmd, dir)
	if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLURM_CONF", s.conf)
	start := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		log, err := os.Create(filepath.Join(dir, "log", filepath.Base(name)+".out"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		s.daemons = append(s.daemons, cmd)
	}
	t.Cleanup(func() {
		exec.Command("scancel", "--full", "--partition=debug").Run()
		// Wait (bounded) until no job is left, COMPLETING included: a
		// cancelled job's slurmstepd reports its end to slurmd, and one
		// whose slurmd is already gone stays behind, orphaned.
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			if out, err := exec.Command("squeue", "-h").Output(); err != nil || strings.TrimSpace(string(out)) == "" {
				break
			}
		}
		// TERM first, so that slurmctld and slurmd reap their helpers
		// (slurmscriptd, slurmstepd) instead of leaving them to init.
		for i := len(s.daemons) - 1; i >= 0; i-- {
			d := s.daemons[i]
			d.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { d.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				d.Process.Kill()
				<-done
			}
		}
	})
	start("munged", "-F", "-f", "--socket="+dir+"/munge/sock", "--key-file="+dir+"/munge/munge.key",
		"--log-file="+dir+"/log/munged.log", "--pid-file="+dir+"/munge/pid", "--seed-file="+dir+"/munge/seed")
	start("slurmctld", "-D", "-i", "-f", s.conf)
	start("slurmd", "-D", "-f", s.conf)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := exec.Command("sinfo", "-h", "-o", "%t").CombinedOutput()
		if strings.TrimSpace(string(out)) == "idle" {
			return s
		}
		if time.Now().After(deadline) {
			logs, _ := exec.Command("sh", "-c", "tail -n 20 "+dir+"/log/*").CombinedOutput()
			t.Fatalf("Slurm's node not idle after 30s (sinfo: %q):\n%s", out, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sbatch submits scripts/slurm/ringtune.sbatch for a one-node job with two
// CPU tasks and waits for it; it returns sbatch's status and the job output.
func (s *slurmCluster) sbatch(t *testing.T, e *launchEnv, env ...string) (int, string) {
	t.Helper()
	out := filepath.Join(e.dir, "job.out")
	cmd := exec.Command("timeout", "60", "sbatch", "--wait", "--gres=none", "--nodes=1", "--ntasks-per-node=2",
		"--cpus-per-task=1", "--time=2", "--output="+out, filepath.Join(repoRoot(), "scripts", "slurm", "ringtune.sbatch"), e.config)
	cmd.Env = append(os.Environ(), "RINGTUNE_BIN="+e.bin, "RINGTUNE_KEY_FILE="+e.keyFile, "RINGTUNE_CPU=1",
		"RINGTUNE_PORT=17946", "RINGTUNE_NODE_PORT=0", "RINGTUNE_GRACE=2")
	cmd.Env = append(cmd.Env, env...)
	submit, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	job, _ := os.ReadFile(out)
	return code, string(submit) + string(job)
}

// The batch script through a real Slurm: the coordinator on the allocation's
// first node at its address, one node per task with its local rank, the key
// file, the label, and the job's status being the coordinator's.
func TestSlurmBatch(t *testing.T) {
	s := needSlurm(t)
	e := newEnv(t, "coordinator.exit_after=3s\ncoordinator.wait_nodes=2\nnode.exit_after=4s\n")
	code, out := s.sbatch(t, e)
	if code != 0 {
		t.Fatalf("job exited %d:\n%s", code, out)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`stub coordinator .*"--config" "` + regexp.QuoteMeta(e.config) + `" "--cluster.key_file" "` + regexp.QuoteMeta(e.keyFile) + `" "--cluster.bind" "127.0.0.1:17946"`),
		regexp.MustCompile(`stub node .*"join" "--coordinator" "127.0.0.1:17946" "--key-file" "` + regexp.QuoteMeta(e.keyFile) + `" "--device" "cpu" "--bind" "127.0.0.1:0" "--name" "` + s.host + `-0" "--label" "lt-label"`),
		regexp.MustCompile(`stub node .*"--name" "` + s.host + `-1"`),
		regexp.MustCompile(`coordinator exited with status 0`),
	} {
		if !want.MatchString(out) {
			t.Errorf("job output lacks %s:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "key_sha256="+e.keySHA()); n != 3 {
		t.Errorf("want 3 processes reading the key, got %d:\n%s", n, out)
	}
	assertNothingLeft(t, e, nil, nil, 10*time.Second)
}

// Failure paths: a key file others can read is refused before anything
// starts; a failing coordinator is the job's status and nodes that stay are
// stopped after RINGTUNE_GRACE.
func TestSlurmBatchFailures(t *testing.T) {
	s := needSlurm(t)
	e := newEnv(t, "coordinator.exit_after=2s\ncoordinator.wait_nodes=2\ncoordinator.exit_code=3\n")
	os.Chmod(e.keyFile, 0o644)
	code, out := s.sbatch(t, e)
	if code == 0 || !strings.Contains(out, "key file "+e.keyFile+" has mode 644: run chmod 600") || strings.Contains(out, "stub") {
		t.Errorf("world-readable key: exit %d, want a failure naming the file before anything starts:\n%s", code, out)
	}
	os.Chmod(e.keyFile, 0o600)
	code, out = s.sbatch(t, e)
	if code != 3 || !strings.Contains(out, "nodes still running 2s after the coordinator") {
		t.Errorf("failing coordinator: exit %d, want 3 and the nodes stopped:\n%s", code, out)
	}
	code, out = s.sbatch(t, e, "RINGTUNE_BIN=/nonexistent")
	if code == 0 || !strings.Contains(out, "/nonexistent/coordinator not found on "+s.host) {
		t.Errorf("missing binary: exit %d, want a failure naming it and the host:\n%s", code, out)
	}
	assertNothingLeft(t, e, nil, nil, 10*time.Second)
}
