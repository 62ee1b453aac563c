/** `npm run openapi`: (re)writes `docs/openapi.json` from the API's routes and schemas. */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { packageFile } from '../package.js';
import { openApiText } from './openapi.js';

const file = fileURLToPath(packageFile('docs/openapi.json'));
writeFileSync(file, openApiText());
console.log(`wrote ${file}`);
