// Package setupcheck holds the tests of scripts/setup.sh: what a machine
// without libtorch, with a bad --libtorch directory, or with a wrong option is
// told.
package setupcheck
