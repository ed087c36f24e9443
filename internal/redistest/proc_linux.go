package redistest

import (
	"os/exec"
	"syscall"
)

// killWithParent asks Linux to kill the server if the test binary dies
// without running its cleanups (a panic in another goroutine, a kill -9, a
// test timeout).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
