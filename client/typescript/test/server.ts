/**
 * A real sessiond server for the tests: `sessiond serve` on a free loopback
 * port with a database in a temporary directory, which a test can kill and
 * start again on the same port and database (a server restart).
 *
 * The command is $SESSIOND, or the repository's .venv/bin/sessiond
 * (`make install`).
 */
import { ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { SessiondClient } from "../src";

const SESSIOND = process.env.SESSIOND ?? resolve(__dirname, "../../../../.venv/bin/sessiond");

/** freePort asks the kernel for a port that is free now. */
function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => (typeof address === "object" && address !== null ? ok(address.port) : fail(new Error("no port"))));
    });
  });
}

/** An API key the server accepts, written to its key file. */
export interface ApiKey {
  key: string;
  tenant: string;
}

/** Settings of a test server beyond the defaults. */
export interface ServerOptions {
  /** args are extra `sessiond serve` flags. */
  args?: string[];
  /** apiKeys, when given, turn authentication on with these admin keys. */
  apiKeys?: ApiKey[];
}

export class TestServer {
  readonly address: string;
  private readonly dir: string;
  private readonly args: string[];
  private process: ChildProcess | undefined;
  private output = "";

  private constructor(port: number, options: ServerOptions) {
    this.address = `127.0.0.1:${port}`;
    this.dir = mkdtempSync(join(tmpdir(), "sessiond-ts-"));
    this.args = ["serve", "--database", join(this.dir, "sessiond.db"), "--address", this.address, ...(options.args ?? [])];
    if (options.apiKeys !== undefined) {
      const file = join(this.dir, "keys.toml");
      writeFileSync(
        file,
        options.apiKeys
          .map((k, i) => {
            const sha = createHash("sha256").update(k.key).digest("hex");
            return `[[keys]]\nname = "k${i}"\nsha256 = "${sha}"\ntenant = "${k.tenant}"\nrole = "admin"\n`;
          })
          .join("\n"),
      );
      this.args.push("--api-keys-file", file);
    }
  }

  /** start launches a server and waits until it answers. */
  static async start(options: ServerOptions = {}): Promise<TestServer> {
    const server = new TestServer(await freePort(), options);
    await server.restart();
    return server;
  }

  /** restart starts the server again (same port, same database) and waits until it answers. */
  async restart(): Promise<void> {
    const child = spawn(SESSIOND, this.args, { stdio: ["ignore", "pipe", "pipe"] });
    this.process = child;
    const keep = (chunk: Buffer): void => {
      this.output = (this.output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    await this.waitUntilServing(child);
  }

  /** kill ends the server at once (SIGKILL) and waits for it to exit. */
  async kill(): Promise<void> {
    const child = this.process;
    this.process = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    const exited = new Promise((ok) => child.once("exit", ok));
    child.kill("SIGKILL");
    await exited;
  }

  /** stop kills the server and removes its files. */
  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async waitUntilServing(child: ChildProcess): Promise<void> {
    // A key the server may not know: UNAUTHENTICATED still proves it serves.
    const probe = new SessiondClient(this.address, { apiKey: "probe", retry: { maxRetries: 0 } });
    try {
      for (let attempt = 0; attempt < 600; attempt += 1) {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`sessiond exited early:\n${this.output}`);
        }
        try {
          await probe.getStats({}, { deadlineMs: 1_000 });
          return;
        } catch (err) {
          if ((err as { codeName?: string }).codeName === "UNAUTHENTICATED") {
            return;
          }
        }
        await new Promise((ok) => setTimeout(ok, 100));
      }
      throw new Error(`sessiond did not start on ${this.address}:\n${this.output}`);
    } finally {
      probe.close();
    }
  }
}

/** newApiKey makes a random key in the server's format. */
export function newApiKey(tenant: string): ApiKey {
  return { key: `sk_sessiond_${randomBytes(24).toString("base64url")}`, tenant };
}

/** uniqueId makes an id no other test run uses. */
export function uniqueId(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}
