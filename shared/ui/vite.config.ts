/// <reference types="vitest/config" />
// The gateway serves the build at /ui/ (shared/talon/api/ui.py), so every URL is under it.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
  // `npm run dev` serves the app with hot reload; API calls go to the gateway the user saves.
  server: { port: 5173 },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
