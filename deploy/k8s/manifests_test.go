package k8s

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yamlv3 "go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// objects is every object of the manifests, decoded strictly: an unknown or
// misspelt field (the usual way a manifest silently loses a setting) fails.
type objects struct {
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
}

func load(t *testing.T) *objects {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	o := &objects{map[string]*appsv1.Deployment{}, map[string]*appsv1.StatefulSet{}, map[string]*corev1.Service{}, map[string]*corev1.ConfigMap{}, map[string]*corev1.Secret{}}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(raw), "\n---\n") {
			where := fmt.Sprintf("%s document %d", f, i+1)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				obj = &appsv1.Deployment{}
			case "apps/v1 StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "v1 Service":
				obj = &corev1.Service{}
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "v1 Secret":
				obj = &corev1.Secret{}
			default:
				t.Fatalf("%s: unexpected %q %q", where, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			switch x := obj.(type) {
			case *appsv1.Deployment:
				o.deployments[x.Name] = x
			case *appsv1.StatefulSet:
				o.statefulSets[x.Name] = x
			case *corev1.Service:
				o.services[x.Name] = x
			case *corev1.ConfigMap:
				o.configMaps[x.Name] = x
			case *corev1.Secret:
				o.secrets[x.Name] = x
			}
		}
	}
	return o
}

// clusterConfig is the part of the ConfigMap's cluster.yaml the manifests
// depend on.
type clusterConfig struct {
	Cluster struct {
		Bind, GRPC, KeyFile, Label string
	}
}

func (o *objects) config(t *testing.T) clusterConfig {
	t.Helper()
	cm := o.configMaps["ringtune-config"]
	if cm == nil || cm.Data["cluster.yaml"] == "" {
		t.Fatal("ConfigMap ringtune-config with cluster.yaml missing")
	}
	var raw struct {
		Cluster map[string]any `yaml:"cluster"`
	}
	if err := yamlv3.Unmarshal([]byte(cm.Data["cluster.yaml"]), &raw); err != nil {
		t.Fatalf("ConfigMap ringtune-config cluster.yaml: %v", err)
	}
	var c clusterConfig
	c.Cluster.Bind, _ = raw.Cluster["bind"].(string)
	c.Cluster.GRPC, _ = raw.Cluster["grpc"].(string)
	c.Cluster.KeyFile, _ = raw.Cluster["key_file"].(string)
	c.Cluster.Label, _ = raw.Cluster["label"].(string)
	return c
}

func port(t *testing.T, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	var n int32
	fmt.Sscan(p, &n)
	return n
}

// argValue returns the value after flag in args.
func argValue(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// checkKeyMount: the pod mounts Secret ringtune-key read-only with mode
// 0400 at a path where flag's file lies.
func checkKeyMount(t *testing.T, who string, pod corev1.PodSpec, keyFile string) {
	t.Helper()
	var vol *corev1.Volume
	for i := range pod.Volumes {
		if s := pod.Volumes[i].Secret; s != nil && s.SecretName == "ringtune-key" {
			vol = &pod.Volumes[i]
		}
	}
	if vol == nil {
		t.Fatalf("%s: no volume of Secret ringtune-key", who)
	}
	if m := vol.Secret.DefaultMode; m == nil || *m&0o077 != 0 {
		t.Errorf("%s: Secret volume mode %v; want 0400 or 0600 (the key must not be readable by others)", who, m)
	}
	for _, it := range vol.Secret.Items {
		if it.Mode != nil && *it.Mode&0o077 != 0 {
			t.Errorf("%s: Secret item %s mode %o", who, it.Key, *it.Mode)
		}
	}
	found := false
	for _, c := range pod.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == vol.Name {
				if !m.ReadOnly {
					t.Errorf("%s: key volume mounted writable", who)
				}
				if filepath.Join(m.MountPath, "cluster.key") == keyFile {
					found = true
				}
			}
		}
	}
	if !found {
		t.Errorf("%s: key file %s is not the Secret's cluster.key at its mount path", who, keyFile)
	}
}

func TestSecret(t *testing.T) {
	o := load(t)
	s := o.secrets["ringtune-key"]
	if s == nil {
		t.Fatal("Secret ringtune-key missing")
	}
	if _, ok := s.StringData["cluster.key"]; !ok {
		t.Errorf("Secret ringtune-key has no cluster.key entry")
	}
}

func TestCoordinator(t *testing.T) {
	o := load(t)
	cfg := o.config(t)
	d := o.deployments["ringtune-coordinator"]
	if d == nil {
		t.Fatal("Deployment ringtune-coordinator missing")
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("coordinator: want exactly one replica, replaced with Recreate (two coordinators split a cluster)")
	}
	pod := d.Spec.Template.Spec
	checkKeyMount(t, "coordinator", pod, cfg.Cluster.KeyFile)
	c := pod.Containers[0]
	cfgFile := argValue(c.Args, "--config")
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == "ringtune-config" && filepath.Join(m.MountPath, "cluster.yaml") == cfgFile {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("coordinator --config %q is not ringtune-config's cluster.yaml", cfgFile)
	}
	// The Service selects the pod and exposes the config's ports, gossip over
	// TCP and UDP.
	svc := o.services["ringtune-coordinator"]
	if svc == nil {
		t.Fatal("Service ringtune-coordinator missing")
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not match the coordinator pod", k, v)
		}
	}
	want := map[string]int32{"TCP gossip": port(t, cfg.Cluster.Bind), "UDP gossip": port(t, cfg.Cluster.Bind), "TCP grpc": port(t, cfg.Cluster.GRPC)}
	for what, p := range want {
		proto := corev1.Protocol(strings.Fields(what)[0])
		ok := false
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol == proto && sp.Port == p && sp.TargetPort.IntValue() == int(p) {
				ok = true
			}
		}
		cok := false
		for _, cp := range c.Ports {
			if cp.Protocol == proto && cp.ContainerPort == p {
				cok = true
			}
		}
		if !ok || !cok {
			t.Errorf("%s port %d of the config: Service has it %v, container has it %v", what, p, ok, cok)
		}
	}
	if a := argValue(c.Args, "--cluster.advertise"); port(t, a) != port(t, cfg.Cluster.Bind) {
		t.Errorf("coordinator advertises %s, not the bind port of %s", a, cfg.Cluster.Bind)
	}
}

func TestNodes(t *testing.T) {
	o := load(t)
	cfg := o.config(t)
	s := o.statefulSets["ringtune-node"]
	if s == nil {
		t.Fatal("StatefulSet ringtune-node missing")
	}
	pod := s.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("node pod: want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	gpu := corev1.ResourceName("nvidia.com/gpu")
	one := resource.MustParse("1")
	if q, ok := c.Resources.Limits[gpu]; !ok || q.Cmp(one) != 0 {
		t.Errorf("node pod: GPU limit %v, want exactly 1 (one node process per GPU)", c.Resources.Limits[gpu])
	}
	if q, ok := c.Resources.Requests[gpu]; ok && q.Cmp(one) != 0 {
		t.Errorf("node pod: GPU request %v, want 1", q)
	}
	if c.Args[0] != "join" || argValue(c.Args, "--device") != "cuda:0" {
		t.Errorf("node args %v: want join ... --device cuda:0 (the pod's only GPU)", c.Args)
	}
	checkKeyMount(t, "node", pod, argValue(c.Args, "--key-file"))
	svc := o.services["ringtune-coordinator"]
	coord := argValue(c.Args, "--coordinator")
	host, p, _ := net.SplitHostPort(coord)
	if svc == nil || host != svc.Name || p != fmt.Sprint(port(t, cfg.Cluster.Bind)) {
		t.Errorf("node --coordinator %s: want the coordinator Service and the config's gossip port %s", coord, cfg.Cluster.Bind)
	}
	if l := argValue(c.Args, "--label"); l != cfg.Cluster.Label {
		t.Errorf("node --label %q, config's cluster.label %q: the node would be refused", l, cfg.Cluster.Label)
	}
	if port(t, argValue(c.Args, "--bind")) != port(t, argValue(c.Args, "--advertise")) {
		t.Errorf("node --bind and --advertise ports differ")
	}
	for _, e := range []string{"POD_IP", "POD_NAME"} {
		if !slices.ContainsFunc(c.Env, func(v corev1.EnvVar) bool { return v.Name == e && v.ValueFrom != nil }) {
			t.Errorf("node args use $(%s) but the pod does not set it from the downward API", e)
		}
	}
}
