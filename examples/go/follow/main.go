// Command follow prints the status changes of sessions as they happen, from
// a watch that resumes by itself after a lost connection or a server
// restart, and lists again when the server says it must.
//
//	go run ./follow -address 127.0.0.1:50051 [-session chat:42] [-until-idle]
//
// It starts from the current state (include_initial), prints "watching" once
// that state is complete, then one line per change of status or runtime
// state. With -until-idle it exits after the followed session has gone from
// running back to idle.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"

	sessiond "github.com/sessiond/sessiond/client/go"
	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
)

func main() {
	address := flag.String("address", sessiond.DefaultAddress, "sessiond server host:port")
	sessionID := flag.String("session", "", "follow only this session (default: all)")
	untilIdle := flag.Bool("until-idle", false, "exit once the session has gone from running to idle")
	flag.Parse()
	client, err := sessiond.New(*address, sessiond.WithAPIKey(os.Getenv("SESSIOND_TOKEN")))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	filter := &v1.WatchFilter{}
	if *sessionID != "" {
		filter.SessionIds = []string{*sessionID}
	}
	for {
		err := follow(ctx, client, filter, *untilIdle)
		if errors.Is(err, sessiond.ErrRelistRequired) {
			fmt.Println("the change log moved past us: starting again from the current state")
			continue
		}
		if err != nil && ctx.Err() == nil {
			log.Fatal(err)
		}
		return
	}
}

// state is what is printed of a session.
type state struct{ status, runtime string }

func follow(ctx context.Context, c *sessiond.Client, filter *v1.WatchFilter, untilIdle bool) error {
	known := map[string]state{}
	sawRunning := false
	for response, err := range c.Watch(ctx, &v1.WatchSessionsRequest{Filter: filter, IncludeInitial: true}) {
		if err != nil {
			return err
		}
		if response.GetType() == v1.WatchResponseType_WATCH_RESPONSE_TYPE_INITIAL_COMPLETE {
			fmt.Printf("watching (%d sessions)\n", len(known))
			continue
		}
		for _, event := range response.GetEvents() {
			s := event.GetSession()
			if s == nil {
				continue
			}
			now := state{short(s.GetStatus().String()), short(s.GetRuntimeState().String())}
			if before, ok := known[s.GetId()]; !ok || before != now {
				fmt.Printf("%s: %s, %s\n", s.GetId(), now.status, now.runtime)
			}
			known[s.GetId()] = now
			sawRunning = sawRunning || now.runtime == "running"
			if untilIdle && sawRunning && now.runtime == "idle" {
				return nil
			}
		}
	}
	return nil
}

// short turns SESSION_STATUS_ACTIVE into "active", RUNTIME_STATE_IDLE into "idle".
func short(enum string) string {
	return strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(enum, "SESSION_STATUS_"), "RUNTIME_STATE_"))
}
