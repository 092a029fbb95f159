package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// tlsServer serves the health service with key k and TLS server config.
func tlsServer(t *testing.T, k Key, conf *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions(k, conf)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)
	t.Cleanup(func() { hs.Shutdown(); srv.Stop() })
	return lis.Addr().String()
}

func check(t *testing.T, addr string, opts ...grpc.DialOption) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestDerivedTLS: two processes with the same key (each deriving the CA and
// signing its own leaf) talk over mutual TLS; a client of another key, a
// plaintext client, and a TLS client without a certificate cannot; a client
// of the right CA does not trust a server of another key.
func TestDerivedTLS(t *testing.T) {
	k := mustKey(t)
	srvConf, err := DerivedTLS(k)
	if err != nil {
		t.Fatal(err)
	}
	cliConf, err := DerivedTLS(k) // another process: its own leaf
	if err != nil {
		t.Fatal(err)
	}
	addr := tlsServer(t, k, srvConf.Server)
	if err := check(t, addr, DialOptions(k, cliConf.Client)...); err != nil {
		t.Fatalf("same key over TLS: %v", err)
	}
	otherKey := mustKey(t)
	other, err := DerivedTLS(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(t, addr, DialOptions(k, other.Client)...); status.Code(err) != codes.Unavailable {
		t.Errorf("client certificate of another key: got %v, want the handshake to fail (Unavailable)", err)
	}
	if err := check(t, addr, DialOptions(k, nil)...); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext client of a TLS server: got %v, want Unavailable", err)
	}
	noCert := cliConf.Client.Clone()
	noCert.Certificates = nil
	if err := check(t, addr, DialOptions(k, noCert)...); status.Code(err) != codes.Unavailable {
		t.Errorf("TLS client without a certificate: got %v, want Unavailable", err)
	}
	// The client side checks the server too.
	rogue := tlsServer(t, k, other.Server)
	err = check(t, rogue, DialOptions(k, cliConf.Client)...)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not from this cluster's CA") {
		t.Errorf("server of another CA: got %v, want Unavailable naming the CA", err)
	}
	// TLS without the token is still refused: TLS adds privacy, not a
	// second way in.
	err = check(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(cliConf.Client)))
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("TLS client without a token: got %v, want Unauthenticated", err)
	}
}

func TestFileTLS(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, usage []x509.ExtKeyUsage) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kb)
	}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	sc, sk := leaf("server", both)
	cc, ck := leaf("client", both)
	k := mustKey(t)
	srv, err := FileTLS(sc, sk, caFile)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := FileTLS(cc, ck, caFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := tlsServer(t, k, srv.Server)
	if err := check(t, addr, DialOptions(k, cli.Client)...); err != nil {
		t.Fatalf("certificates of one CA: %v", err)
	}
	derived, _ := DerivedTLS(k)
	if err := check(t, addr, DialOptions(k, derived.Client)...); status.Code(err) != codes.Unavailable {
		t.Errorf("client of another CA: got %v, want Unavailable", err)
	}
	// Bad files are named.
	serverOnly, serverOnlyKey := leaf("serveronly", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	for name, c := range map[string]struct{ cert, key, ca, want string }{
		"missing cert": {filepath.Join(dir, "nope.pem"), sk, caFile, "nope.pem"},
		"missing ca":   {sc, sk, filepath.Join(dir, "noca.pem"), "noca.pem"},
		"ca not pem":   {sc, sk, sk, "holds no PEM certificate"},
		"key mismatch": {sc, ck, caFile, "server.pem"},
		"server only":  {serverOnly, serverOnlyKey, caFile, "for server and client use"},
	} {
		if _, err := FileTLS(c.cert, c.key, c.ca); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
}
