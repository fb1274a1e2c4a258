package kmshttp_test

import (
	"testing"

	"github.com/hsmkms/hsmkms/kmsadapter/kmsadaptertest"
)

// TestKMSAdapterScenarioThroughTheWire runs kmsadapter's scenario with the
// unmodified SDK client, over loopback HTTP and through the in-process
// transport, each on a fresh key store.
func TestKMSAdapterScenarioThroughTheWire(t *testing.T) {
	t.Run("loopback", func(t *testing.T) { kmsadaptertest.Scenario(t, newEnv(t, envOpt{}).loopback(alice)) })
	t.Run("in-process", func(t *testing.T) { kmsadaptertest.Scenario(t, newEnv(t, envOpt{}).inProcess(alice)) })
}
