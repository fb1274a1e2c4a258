package kmsadapter_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
)

// TestCatalog checks the cluster.Catalog contract on both stores.
func TestCatalog(t *testing.T) {
	bolt, err := kmsadapter.OpenBoltStore(t.TempDir() + "/cat.db")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, bolt.Close()) })
	for name, store := range map[string]kmsadapter.Store{"memory": kmsadapter.NewMemoryStore(), "bolt": bolt} {
		t.Run(name, func(t *testing.T) {
			cat := kmsadapter.NewCatalog(store)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			b, err := cat.Create(bg, cluster.KeyRecord{ID: "b", Spec: hsm.AES256, Usage: hsm.UsageEncrypt, Created: now})
			require.NoError(t, err)
			a, err := cat.Create(bg, cluster.KeyRecord{ID: "a", Spec: hsm.ECP256, Usage: hsm.UsageSign, Created: now})
			require.NoError(t, err)
			require.Greater(t, a.Version, b.Version, "versions grow")
			_, err = cat.Create(bg, cluster.KeyRecord{ID: "a"})
			require.ErrorIs(t, err, hsm.ErrKeyExists)

			require.NoError(t, cat.MarkDestroyed(bg, "a", now))
			require.NoError(t, cat.MarkDestroyed(bg, "a", now.Add(time.Hour)), "again: nothing more")
			got, err := cat.Get(bg, "a")
			require.NoError(t, err)
			require.True(t, got.Destroyed)
			require.True(t, got.DestroyedAt.Equal(now), "the first destruction time stays")
			_, err = cat.Create(bg, cluster.KeyRecord{ID: "a"})
			require.ErrorIs(t, err, hsm.ErrKeyExists, "IDs are never reused")
			require.ErrorIs(t, cat.MarkDestroyed(bg, "zzz", now), hsm.ErrKeyNotFound)
			_, err = cat.Get(bg, "zzz")
			require.ErrorIs(t, err, hsm.ErrKeyNotFound)

			all, err := cat.List(bg)
			require.NoError(t, err)
			require.Len(t, all, 2)
			require.Equal(t, hsm.KeyID("a"), all[0].ID, "ordered by ID")
			require.Equal(t, hsm.ECP256, all[0].Spec)
		})
	}
}
