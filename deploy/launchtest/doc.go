// Package launchtest holds the tests of the multi-host launchers:
// scripts/launch.sh against a real sshd started by the test on loopback
// addresses, the Slurm batch script, and the flags they and the Kubernetes
// manifests pass to the real binaries. It has no non-test code; stub/ is the
// stand-in binary for the launcher's mechanics tests, and e2e_test.go runs
// both launchers with the real binaries through a short training run.
package launchtest
