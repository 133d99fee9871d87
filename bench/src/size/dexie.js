export { default } from 'dexie';
