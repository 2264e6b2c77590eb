import { describe, expect, it } from "vitest";
import { reduce, type State } from "./sessionState";
import type { StreamEvent } from "./sse";

const TURN = "5b0c0000-0000-4000-8000-000000000001";
let nextId = 1;
function event(type: string, data: Record<string, unknown>): { type: "event"; event: StreamEvent } {
  return { type: "event", event: { id: nextId++, type, turnId: TURN, data, createdAt: "2026-11-30T18:00:00.000000Z" } as StreamEvent };
}
const empty: State = { messages: {}, turns: {} };

describe("a tool step from the stream", () => {
  it("has its arguments when it starts and its result when it ends, before the turn's messages", () => {
    let state = reduce(empty, event("turn.started", {}));
    state = reduce(state, event("step.started", {
      step: "call-stripe-readonly.list_invoices", index: 2, kind: "tool",
      tool: "stripe-readonly.list_invoices", callId: "c1", arguments: '{"customer_id": "cus_1"}',
    }));
    let step = state.turns[TURN].steps[2];
    expect(step.state).toBe("started");
    expect(step.arguments).toBe('{"customer_id": "cus_1"}');
    expect(step.result).toBeUndefined();
    state = reduce(state, event("step.completed", {
      step: "call-stripe-readonly.list_invoices", index: 2, kind: "tool", isError: false,
      tool: "stripe-readonly.list_invoices", callId: "c1", arguments: '{"customer_id": "cus_1"}',
      result: "x".repeat(2000), resultTruncated: 5000,
    }));
    step = state.turns[TURN].steps[2];
    expect(step.state).toBe("completed");
    expect(step.result).toHaveLength(2000);
    expect(step.resultTruncated).toBe(5000);
    expect(state.turns[TURN].state).toBe("running");
    expect(Object.keys(state.messages)).toEqual([]);
  });

  it("keeps a turn view's previews for steps that ran before the page opened", () => {
    const state = reduce(empty, {
      type: "turn",
      view: {
        id: TURN, state: "running", source: "api", provider: null, error: null,
        steps: [{ index: 2, name: "call-x.y", kind: "tool", state: "completed", startedAt: null, completedAt: null,
                  tool: "x.y", callId: "c9", arguments: "{}", result: "ok" }],
      },
    });
    expect(state.turns[TURN].steps[2]).toMatchObject({ arguments: "{}", result: "ok", callId: "c9" });
  });

  it("says which tool sources a turn runs without, and why", () => {
    const state = reduce(empty, event("tools.unavailable", { sources: [{ source: "mcp:hubspot", error: "timed out" }] }));
    expect(state.turns[TURN].notices).toEqual(["tools unavailable: mcp:hubspot: timed out"]);
  });
});
