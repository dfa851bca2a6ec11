/**
 * `npm run demo`: shows cowstream end to end on one machine, with the
 * embedded defaults. It grows with every feature that lands.
 */
import { buildProgram } from '../src/cli/main.js';

async function demo(): Promise<void> {
  console.log('cowstream demo');
  console.log(buildProgram().helpInformation());
}

await demo();
