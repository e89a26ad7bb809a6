// Package client is the Go client of sessiond, the gRPC session service for
// AI-agent runtimes. The generated code lives in the sessiondv1 package
// (messages and SessionService, MessageService and StatsService clients),
// produced by scripts/gen_clients.sh from protos/sessiond/v1; never edit it by
// hand. See README.md for examples.
package client
