package cluster_test

import (
	"context"
	"fmt"
	"os"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	softhsmtest "github.com/hsmkms/hsmkms/softhsm-test"
)

// A cluster of three SoftHSM2 tokens: bootstrap it, create a key (it is on
// every member), lose a member, keep working.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example-")
	defer os.RemoveAll(dir)
	hsms, err := softhsmtest.NewCluster(dir, 3)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer hsms.Close()

	cfg := cluster.DefaultConfig()
	var opts []cluster.Option
	for i, m := range hsms.Members {
		name := fmt.Sprintf("hsm-%d", i)
		cfg.Members = append(cfg.Members, cluster.MemberConfig{Name: name, Token: m.Config(), SOPIN: m.SOPIN()})
		opts = append(opts, cluster.WithTokenOptions(name, hsm.WithInterceptor(m.Faults)))
	}
	c, err := cluster.New(ctx, cfg, opts...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	if err := c.Bootstrap(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := c.GenerateKey(ctx, "orders", hsm.AES256, hsm.KeyOptions{}); err != nil {
		fmt.Println(err)
		return
	}
	cv, _ := c.Coverage(ctx)
	fmt.Println("orders is on", cv.Keys[0].Holders)

	_ = hsms.Members[0].Crash()
	ct, iv, err := c.EncryptGCM(ctx, "orders", nil, []byte("hello"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	pt, err := c.DecryptGCM(ctx, "orders", iv, ct, nil)
	fmt.Printf("with hsm-0 crashed: %s %v\n", pt, err)
	// Output:
	// orders is on [hsm-0 hsm-1 hsm-2]
	// with hsm-0 crashed: hello <nil>
}
