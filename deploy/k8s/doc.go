// Package k8s holds ringtune's Kubernetes manifests (the *.yaml files here)
// and the test that decodes them with the Kubernetes API types and checks
// what a cluster would only report at run time: the key Secret mounted
// read-only and private, one GPU per node pod, Service ports equal to the
// config's, and node arguments pointing at the coordinator's Service.
package k8s
