import { describe, expect, it } from "vitest";
import { diffManifests } from "./diff";

describe("diffManifests", () => {
  it("lists changed, added and removed fields, ignoring server-kept ones", () => {
    const before = {
      metadata: { name: "s", resourceVersion: "3", labels: { a: "1" } },
      spec: { cron: "0 14 * * 1-5", enabled: true, target: { agent: "x" } },
      status: { nextFireAt: "t1" },
    };
    const after = {
      metadata: { name: "s", resourceVersion: "4", labels: { a: "1", b: "2" } },
      spec: { cron: "0 15 * * 1-5", target: { agent: "x" } },
      status: { nextFireAt: "t2" },
    };
    expect(diffManifests(before, after)).toEqual([
      { path: "metadata.labels.b", before: undefined, after: "2" },
      { path: "spec.cron", before: "0 14 * * 1-5", after: "0 15 * * 1-5" },
      { path: "spec.enabled", before: true, after: undefined },
    ]);
  });

  it("treats everything as added for a new object", () => {
    expect(diffManifests(null, { spec: { url: "u", headers: [] } })).toEqual([
      { path: "spec.headers", before: undefined, after: [] },
      { path: "spec.url", before: undefined, after: "u" },
    ]);
  });
});
