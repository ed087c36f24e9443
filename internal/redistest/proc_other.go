//go:build !linux

package redistest

import "os/exec"

// killWithParent does nothing here: the server is killed by the test's
// cleanup only.
func killWithParent(*exec.Cmd) {}
