import { describe, expect, it } from "vitest";
import { currentGateway, loadGateways, normalizeUrl, removeGateway, saveGateway, switchGateway } from "./gateways";

class MemoryStorage implements Storage {
  private items = new Map<string, string>();
  get length() { return this.items.size; }
  clear() { this.items.clear(); }
  getItem(key: string) { return this.items.get(key) ?? null; }
  key(index: number) { return [...this.items.keys()][index] ?? null; }
  removeItem(key: string) { this.items.delete(key); }
  setItem(key: string, value: string) { this.items.set(key, value); }
}

describe("saved gateways", () => {
  it("saves, replaces by name, switches and removes", () => {
    const storage = new MemoryStorage();
    let n = 0;
    const id = () => `id${++n}`;
    saveGateway(storage, { name: "", url: "http://127.0.0.1:8080/", token: " a " }, id);
    expect(currentGateway(storage)).toEqual({ id: "id1", name: "127.0.0.1:8080", url: "http://127.0.0.1:8080", token: "a" });
    saveGateway(storage, { name: "prod", url: "https://talon.example.com", token: "b" }, id);
    saveGateway(storage, { name: "prod", url: "https://talon.example.com", token: "c" }, id);
    expect(loadGateways(storage).map((g) => [g.name, g.token])).toEqual([["127.0.0.1:8080", "a"], ["prod", "c"]]);
    expect(currentGateway(storage)?.id).toBe("id2");
    switchGateway(storage, "id1");
    expect(currentGateway(storage)?.name).toBe("127.0.0.1:8080");
    expect(removeGateway(storage, "id1")?.name).toBe("prod");
    expect(removeGateway(storage, "id2")).toBeNull();
  });

  it("refuses URLs that are not http(s) or that carry credentials", () => {
    expect(() => normalizeUrl("javascript:alert(1)")).toThrow();
    expect(() => normalizeUrl("http://user:pw@host")).toThrow(/Token field/);
    expect(normalizeUrl(" https://h/x/ ")).toBe("https://h/x");
  });
});
