import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const root = fileURLToPath(new URL('.', import.meta.url));
// `npm run console:dev`: the dev server proxies the API to this catalogue.
const catalog = process.env.COWSTREAM_CATALOG_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  root,
  // Relative asset URLs: the page works wherever it is served from.
  base: './',
  build: {
    outDir: fileURLToPath(new URL('../dist/web', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    // No inline scripts or styles: the console's CSP allows only 'self'.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  server: {
    proxy: Object.fromEntries(['/archives', '/restores', '/hosts'].map((p) => [p, { target: catalog, changeOrigin: true }])),
  },
});
