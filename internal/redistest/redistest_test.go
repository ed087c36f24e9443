package redistest

import (
	"testing"
	"time"
)

// A test and the backends it builds call Addr separately; with no shared
// server they must still land on the same one (a second server per call
// left a test's XADD on a server its subscriber never read).
func TestOwn_oneServerPerTest(t *testing.T) {
	first := own(t)
	if again := own(t); again != first {
		t.Fatalf("second call for the same test gave %s, the first %s", again, first)
	}
	if err := ping(first, 2*time.Second); err != nil {
		t.Fatalf("the server does not answer: %v", err)
	}
}
