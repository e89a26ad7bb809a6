// Command agent is a minimal agent runtime on sessiond: one turn of a chat
// session, kept in the service instead of the runtime's own tables.
//
//	go run ./agent -address 127.0.0.1:50051 -session chat:42 -turn t1 "What is WAL mode?"
//
// It touches the session (creating it on first use), marks the runtime
// running, appends the user's message, reads the last 20 messages as the
// model's context, appends the assistant's reply with a tool call and the
// tool's result, records the model call's usage, and marks the runtime idle.
// Every write carries an id chosen here (message ids, the usage request id),
// so the client may retry any of them after a lost connection and the turn
// is still stored once.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	sessiond "github.com/sessiond/sessiond/client/go"
	v1 "github.com/sessiond/sessiond/client/go/sessiondv1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func main() {
	address := flag.String("address", sessiond.DefaultAddress, "sessiond server host:port")
	sessionID := flag.String("session", "example:go", "session id")
	turn := flag.String("turn", "t1", "turn id; message and usage ids derive from it")
	flag.Parse()
	text := strings.Join(flag.Args(), " ")
	if text == "" {
		text = "What is WAL mode?"
	}
	client, err := sessiond.New(*address, sessiond.WithAPIKey(os.Getenv("SESSIOND_TOKEN")))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if err := runTurn(context.Background(), client, *sessionID, *turn, text); err != nil {
		log.Fatal(err)
	}
}

func runTurn(ctx context.Context, c *sessiond.Client, sessionID, turn, text string) error {
	touched, err := c.TouchSession(ctx, &v1.TouchSessionRequest{Session: &v1.Session{
		Id: sessionID, Kind: v1.SessionKind_SESSION_KIND_INTERACTIVE, Channel: "cli",
		Agent: "example-agent", Model: "example-model",
	}})
	if err != nil {
		return fmt.Errorf("touch: %w", err)
	}
	fmt.Printf("session %s (created: %v)\n", sessionID, touched.GetCreated())

	if _, err := c.SetRuntimeState(ctx, &v1.SetRuntimeStateRequest{
		SessionId: sessionID, State: v1.RuntimeState_RUNTIME_STATE_RUNNING,
		TurnId: turn, TurnStartedAt: timestamppb.Now(),
	}); err != nil {
		return fmt.Errorf("running: %w", err)
	}

	if _, err := c.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: sessionID, Messages: []*v1.Message{
		{Id: turn + "-user", Role: v1.Role_ROLE_USER, Content: text},
	}}); err != nil {
		return fmt.Errorf("user message: %w", err)
	}

	history, err := c.ListMessages(ctx, &v1.ListMessagesRequest{SessionId: sessionID, LastN: 20})
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	fmt.Printf("context: the last %d messages\n", len(history.GetMessages()))

	// The model's answer, made up here: it calls a tool and reads its result.
	call := &v1.ToolCall{Id: turn + "-call", Name: "search", ArgumentsJson: `{"q":"sqlite wal"}`}
	reply, err := c.AppendMessages(ctx, &v1.AppendMessagesRequest{SessionId: sessionID, Messages: []*v1.Message{
		{Id: turn + "-assistant", Role: v1.Role_ROLE_ASSISTANT, Content: "Let me look that up.", ToolCalls: []*v1.ToolCall{call}},
		{Id: turn + "-tool", Role: v1.Role_ROLE_TOOL, Name: "search", ToolCallId: call.GetId(),
			Content: "WAL: a write-ahead log lets readers and one writer work at once."},
	}})
	if err != nil {
		return fmt.Errorf("assistant reply: %w", err)
	}
	fmt.Printf("appended the reply: session has %d messages\n", reply.GetSession().GetMessageCount())

	usage, err := c.RecordUsage(ctx, &v1.RecordUsageRequest{
		SessionId: sessionID, Model: "example-model", RequestId: turn + "-model-call",
		Usage: &v1.Usage{PromptTokens: 812, CompletionTokens: 95, CostMicros: 3180},
	})
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	fmt.Printf("usage: %d tokens, %d micro-dollars in total\n",
		usage.GetSessionUsage().GetTotalTokens(), usage.GetSessionUsage().GetCostMicros())

	if _, err := c.SetRuntimeState(ctx, &v1.SetRuntimeStateRequest{
		SessionId: sessionID, State: v1.RuntimeState_RUNTIME_STATE_IDLE,
	}); err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	fmt.Println("idle")
	return nil
}
