package kmsadapter_test

import (
	"testing"

	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmsadaptertest"
)

// TestScenarioThroughAPI makes every call of the API interface through
// the interface only, as code written for *kms.Client would.
func TestScenarioThroughAPI(t *testing.T) {
	t.Run("token", func(t *testing.T) {
		var api kmsadapter.API = newEnv(t).c
		kmsadaptertest.Scenario(t, api)
	})
	t.Run("cluster of 3", func(t *testing.T) {
		var api kmsadapter.API = newEnvOnCluster(t).c
		kmsadaptertest.Scenario(t, api)
	})
}
