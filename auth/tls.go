package auth

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"
)

// TLS for ringtune's gRPC servers (the coordinator's control server and each
// node's ring server, and every service registered on them). Every process
// is both a server and a client, and the identity that matters is "holds a
// certificate of the cluster's CA", not a host name: servers require and
// verify a client certificate (mutual TLS) and clients verify the server's
// chain against the CA without a host-name check, so processes may dial
// each other by any address.
//
// By default the CA is derived from the cluster key (DerivedTLS): its
// Ed25519 key comes from HKDF over the key, so every holder of the key
// derives the same CA, signs a fresh leaf certificate at start, and
// verifies peers against it: nodes need nothing but the key file. Or the
// CA, certificate and key come from PEM files (FileTLS).

// TLSServerName is the DNS name in derived leaf certificates.
const TLSServerName = "ringtune"

// caEpoch is the fixed validity start of the derived CA, so that every
// process derives a byte-identical CA certificate.
var caEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// TLSConfigs are the server and client sides of one process.
type TLSConfigs struct {
	Server, Client *tls.Config
}

// DerivedTLS returns TLS configurations whose CA is derived from k, with a
// fresh leaf certificate signed by it.
func DerivedTLS(k Key) (*TLSConfigs, error) {
	if err := k.Validate(); err != nil {
		return nil, err
	}
	seed, err := hkdf.Key(sha256.New, k, nil, "ringtune tls ca v1", ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("auth: derive the TLS CA key: %w", err)
	}
	caKey := ed25519.NewKeyFromSeed(seed)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ringtune cluster CA"},
		NotBefore:             caEpoch,
		NotAfter:              caEpoch.AddDate(100, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	// Ed25519 signatures are deterministic, so is the CA certificate.
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("auth: derived TLS CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("auth: derived TLS CA: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("auth: TLS serial: %w", err)
	}
	now := time.Now()
	leafTmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: TLSServerName},
		DNSNames:     []string{TLSServerName},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew between hosts
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, pub, caKey)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return configs(tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: priv, Leaf: leaf}, pool), nil
}

// FileTLS returns TLS configurations from PEM files: this process's
// certificate and its key, and the CA that signs every process's
// certificate. The certificate must allow both server and client
// authentication (every process is both). Errors name the file.
func FileTLS(certFile, keyFile, caFile string) (*TLSConfigs, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("auth: TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("auth: TLS CA %s holds no PEM certificate", caFile)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("auth: TLS certificate %s: %w", certFile, err)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return nil, fmt.Errorf("auth: TLS certificate %s does not verify against the CA %s for server and client use: %w", certFile, caFile, err)
		}
	}
	cert.Leaf = leaf
	return configs(cert, pool), nil
}

func configs(cert tls.Certificate, pool *x509.CertPool) *TLSConfigs {
	server := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	client := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ServerName:   TLSServerName,
		// The chain is verified in VerifyConnection against the cluster
		// CA, without a host-name check: processes dial each other by
		// address, and any holder of a CA certificate is a member.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, pool)
		},
	}
	return &TLSConfigs{Server: server, Client: client}
}

func verifyChain(certs []*x509.Certificate, pool *x509.CertPool) error {
	if len(certs) == 0 {
		return errors.New("auth: the server sent no TLS certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("auth: the server's TLS certificate is not from this cluster's CA (a different cluster key or cluster.tls.ca): %w", err)
	}
	return nil
}
