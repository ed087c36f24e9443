// Package redistest gives tests a real Redis server, or a real Redis
// Cluster.
//
// [Addr] returns the address of a server to test against, in this order:
// the REDIS_ADDR environment variable; a server already answering PING on
// 127.0.0.1:6379; else a redis-server (found on PATH) that it starts on a free
// port, with persistence off, in a temporary directory, and kills when the
// test ends. It never skips a test: with no server to use it fails the test
// and says how to get one.
//
// [ClusterAddrs] does the same for a Redis Cluster: the nodes named by
// REDIS_CLUSTER_ADDRS, else three masters (redis-server --cluster-enabled
// yes on free ports, joined by redis-cli --cluster create) that the tests
// of a package share and [Main] stops. [StartCluster] starts a cluster of
// a test's own, with replicas if asked, whose nodes the test may kill and
// restart.
//
// A server may be shared (REDIS_ADDR, port 6379), so tests name their
// streams with [Name], and delete what matches [Pattern] when they end.
package redistest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvAddr names the environment variable that points tests at a Redis
// server ("host:port").
const EnvAddr = "REDIS_ADDR"

// defaultAddr is where a locally installed Redis listens.
const defaultAddr = "127.0.0.1:6379"

// startTimeout bounds the wait for a started redis-server to answer.
const startTimeout = 10 * time.Second

// Addr returns the address of a Redis server for t (see the package doc).
// Every call with the same t returns the same server, so that a test and
// the backends it builds see the same streams. A server it starts lives
// until t and its subtests end.
func Addr(t testing.TB) string {
	t.Helper()
	if addr := strings.TrimSpace(os.Getenv(EnvAddr)); addr != "" {
		if err := ping(addr, 2*time.Second); err != nil {
			t.Fatalf("redistest: %s=%s does not answer PING: %v", EnvAddr, addr, err)
		}
		return addr
	}
	if ping(defaultAddr, 300*time.Millisecond) == nil {
		return defaultAddr
	}
	return own(t)
}

// owned maps each test to the server that [Addr] starts for it.
var owned = struct {
	sync.Mutex
	servers map[testing.TB]*ownServer
}{servers: map[testing.TB]*ownServer{}}

type ownServer struct {
	once sync.Once
	addr string
}

// own returns the server started for t, starting it on t's first call.
func own(t testing.TB) string {
	t.Helper()
	owned.Lock()
	s, ok := owned.servers[t]
	if !ok {
		s = &ownServer{}
		owned.servers[t] = s
		t.Cleanup(func() {
			owned.Lock()
			defer owned.Unlock()
			delete(owned.servers, t)
		})
	}
	owned.Unlock()
	s.once.Do(func() { s.addr = start(t) })
	return s.addr
}

// Name returns a stream or topic name unique to this call:
// "{base}-{test name}-{random}", in the characters that topic names allow
// (ASCII letters, digits, '.', '_' and '-'), at most 100 bytes. Names
// derived from it by appending (tier and dead-letter topics) still match
// [Pattern].
func Name(t testing.TB, base string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	if base = clean(base); len(base) > 30 {
		base = base[:30]
	}
	return base + "-" + testName(t) + "-" + hex.EncodeToString(b[:])
}

// Pattern returns a glob (for SCAN MATCH) that matches every name [Name]
// gave t, and no name of another test.
func Pattern(t testing.TB) string {
	return "*-" + testName(t) + "-*"
}

func testName(t testing.TB) string {
	name := clean(t.Name())
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	return name
}

// clean replaces what topic names (and globs) do not allow with '_'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

// start runs a redis-server for t on a free port.
func start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: no Redis server to test against: %s is not set, nothing answers on %s, "+
			"and redis-server is not on PATH. Install it (Debian/Ubuntu: apt-get install -y redis-server; "+
			"version 6.2 or later) or set %s=host:port", EnvAddr, defaultAddr, EnvAddr)
	}
	var lastErr error
	for range 3 { // a free port can be taken between probe and bind
		addr, err := startOnce(t, bin)
		if err == nil {
			return addr
		}
		lastErr = err
	}
	t.Fatalf("redistest: cannot start %s: %v", bin, lastErr)
	return ""
}

func startOnce(t testing.TB, bin string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	s, err := launch(bin, t.TempDir(), port)
	if err != nil {
		return "", err
	}
	t.Cleanup(s.kill)
	return s.addr, nil
}

// server is a redis-server process started by this package.
type server struct {
	bin    string
	dir    string
	port   int
	addr   string
	args   []string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	output *lockedWriter
}

// launch starts redis-server on 127.0.0.1:port with persistence off and
// its files in dir, plus args, and waits until it answers PING.
func launch(bin, dir string, port int, args ...string) (*server, error) {
	s := &server{
		bin:  bin,
		dir:  dir,
		port: port,
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		args: args,
	}
	return s, s.start()
}

// start runs the process and waits until it answers PING.
func (s *server) start() error {
	s.output = &lockedWriter{w: &bytes.Buffer{}}
	args := append([]string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", "",
		"--daemonize", "no",
	}, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout = s.output
	cmd.Stderr = s.output
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(s.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		if ping(s.addr, 200*time.Millisecond) == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("redis-server on port %d exited (%v): %s", s.port, waitErr, s.output.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within %v: %s", s.port, startTimeout, s.output.String())
		}
	}
}

// kill sends SIGKILL (no shutdown, no last save: a crash) and waits until
// the process has exited. It does nothing to a server that is not running.
func (s *server) kill() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// running reports whether the process is still alive.
func (s *server) running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return s.cmd != nil
	}
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ping sends PING in RESP and expects +PONG. A server that wants a password
// answers with an error, and is not usable.
func ping(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// lockedWriter collects a server's output, read while it still runs.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.w.String())
}
