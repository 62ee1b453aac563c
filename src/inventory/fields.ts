/**
 * The inventory's field types shared by its schema and the provisioners' settings slices
 * (src/provisioners/<name>/index.ts): names safe in paths and commands, absolute POSIX paths.
 */
import { z } from 'zod';
import { SAFE_NAME_PATTERN } from '../store/naming.js';

export const name = z
  .string()
  .regex(SAFE_NAME_PATTERN, 'use letters, digits, ".", "_" and "-", starting with a letter or digit')
  .max(63);

/** Absolute POSIX path without control characters or `..` segments. */
export const absolutePath = z
  .string()
  .startsWith('/', 'must be an absolute path')
  .refine(
    (p) => ![...p].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f),
    'must not contain control characters',
  )
  .refine((p) => !p.split('/').includes('..'), 'must not contain ".." segments');
