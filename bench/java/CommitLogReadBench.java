// Decode throughput of Cassandra's own CommitLogReader over a directory of commitlog segments.
//
// Usage: java -cp <cassandra lib/*>:<classes> CommitLogReadBench <segment dir> <tables file> <repeats>
//
// <tables file>: one line per table, "<table id>\t<keyspace>\t<CREATE TABLE statement>", so the
// mutations of those tables are deserialized with the schema they were written with. Mutations of
// other tables are skipped by the reader at their first table id (UnknownTableException), as the
// Python reader skips unselected tables. The handler walks every row and cell of every decoded
// PartitionUpdate (the work the Python reader does to build events) and counts them.
//
// Prints one JSON line per pass over the directory (the first one includes JIT warm-up).

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;

import org.apache.cassandra.config.DatabaseDescriptor;
import org.apache.cassandra.cql3.statements.schema.CreateTableStatement;
import org.apache.cassandra.db.Mutation;
import org.apache.cassandra.db.commitlog.CommitLogDescriptor;
import org.apache.cassandra.db.commitlog.CommitLogReadHandler;
import org.apache.cassandra.db.commitlog.CommitLogReader;
import org.apache.cassandra.db.partitions.PartitionUpdate;
import org.apache.cassandra.db.rows.Cell;
import org.apache.cassandra.db.rows.ColumnData;
import org.apache.cassandra.db.rows.ComplexColumnData;
import org.apache.cassandra.db.rows.Row;
import org.apache.cassandra.db.rows.Unfiltered;
import org.apache.cassandra.dht.Murmur3Partitioner;
import org.apache.cassandra.io.util.File;
import org.apache.cassandra.schema.KeyspaceMetadata;
import org.apache.cassandra.schema.KeyspaceParams;
import org.apache.cassandra.schema.Schema;
import org.apache.cassandra.schema.TableId;
import org.apache.cassandra.schema.TableMetadata;
import org.apache.cassandra.schema.Tables;

public final class CommitLogReadBench
{
    static final class Counter implements CommitLogReadHandler
    {
        final java.util.Set<TableId> selected;
        long mutations, rows, cells, bytes, errors, otherMutations;

        Counter(java.util.Set<TableId> selected)
        {
            this.selected = selected;
        }

        @Override
        public boolean shouldSkipSegmentOnError(CommitLogReadException e)
        {
            errors++;
            System.err.println("read error: " + e.getMessage());
            return false;
        }

        @Override
        public void handleUnrecoverableError(CommitLogReadException e) throws IOException
        {
            errors++;
            Throwable cause = e;
            while (cause.getCause() != null)
                cause = cause.getCause();
            cause.printStackTrace();
            throw new IOException(e);
        }

        @Override
        public void handleMutation(Mutation m, int size, int entryLocation, CommitLogDescriptor desc)
        {
            boolean counted = false;
            for (PartitionUpdate update : m.getPartitionUpdates())
            {
                if (!selected.contains(update.metadata().id))
                    continue; // a system table the tool-mode schema knows: decoded, not counted
                if (!counted)
                {
                    counted = true;
                    mutations++;
                    bytes += size;
                }
                if (update.staticRow() != null && !update.staticRow().isEmpty())
                    walk(update.staticRow());
                for (Unfiltered u : update)
                {
                    if (u.isRow())
                        walk((Row) u);
                }
            }
            if (!counted)
                otherMutations++;
        }

        private void walk(Row row)
        {
            rows++;
            for (ColumnData cd : row)
            {
                if (cd.column().isComplex())
                {
                    for (Cell<?> c : (ComplexColumnData) cd)
                    {
                        cells++;
                        c.valueSize();
                    }
                }
                else
                {
                    cells++;
                    ((Cell<?>) cd).valueSize();
                }
            }
        }
    }

    public static void main(String[] args) throws Exception
    {
        if (args.length != 3)
        {
            System.err.println("usage: CommitLogReadBench <segment dir> <tables file> <repeats>");
            System.exit(2);
        }
        Path dir = Paths.get(args[0]);
        int repeats = Integer.parseInt(args[2]);

        // tool mode: the configuration of the node that wrote the segments (-Dcassandra.config),
        // nothing started, nothing written
        DatabaseDescriptor.toolInitialization();
        DatabaseDescriptor.setPartitionerUnsafe(Murmur3Partitioner.instance);

        Map<String, List<TableMetadata>> byKeyspace = new HashMap<>();
        java.util.Set<TableId> selected = new java.util.HashSet<>();
        for (String line : Files.readAllLines(Paths.get(args[1])))
        {
            if (line.isBlank())
                continue;
            String[] parts = line.split("\t", 3);
            TableMetadata table = CreateTableStatement.parse(parts[2], parts[1])
                                                      .id(TableId.fromUUID(UUID.fromString(parts[0])))
                                                      .partitioner(Murmur3Partitioner.instance)
                                                      .build();
            byKeyspace.computeIfAbsent(parts[1], k -> new ArrayList<>()).add(table);
            selected.add(table.id);
        }
        for (Map.Entry<String, List<TableMetadata>> e : byKeyspace.entrySet())
        {
            KeyspaceMetadata ksm = KeyspaceMetadata.create(e.getKey(), KeyspaceParams.simple(1), Tables.of(e.getValue()));
            Schema.instance.transform(keyspaces -> keyspaces.withAddedOrUpdated(ksm));
        }

        File[] files;
        try (var listing = Files.list(dir))
        {
            files = listing.filter(p -> p.getFileName().toString().endsWith(".log"))
                           .sorted()
                           .map(p -> new File(p.toFile()))
                           .toArray(File[]::new);
        }
        long fileBytes = 0;
        for (File f : files)
            fileBytes += f.length();

        for (int pass = 0; pass < repeats; pass++)
        {
            Counter counter = new Counter(selected);
            CommitLogReader reader = new CommitLogReader();
            var os = (com.sun.management.OperatingSystemMXBean) java.lang.management.ManagementFactory.getOperatingSystemMXBean();
            long cpuStarted = os.getProcessCpuTime(); // all threads (JIT, GC too), like Python's process_time
            long started = System.nanoTime();
            for (File f : files)
                reader.readCommitLogSegment(counter, f, CommitLogReader.ALL_MUTATIONS, false);
            double seconds = (System.nanoTime() - started) / 1e9;
            double cpuSeconds = (os.getProcessCpuTime() - cpuStarted) / 1e9;
            long skipped = 0;
            for (var entry : reader.getInvalidMutations())
                skipped += entry.getValue().get();
            System.out.printf("{\"pass\": %d, \"segments\": %d, \"segment_bytes\": %d, \"mutations\": %d, \"rows\": %d, \"cells\": %d, "
                              + "\"other_known_mutations\": %d, \"skipped_other_tables\": %d, \"errors\": %d, \"seconds\": %.3f, \"cpu_seconds\": %.3f, "
                              + "\"mutations_per_s\": %.0f, \"mb_per_s\": %.2f, \"cpu_mutations_per_s\": %.0f, \"cpu_mb_per_s\": %.2f}%n",
                              pass, files.length, fileBytes, counter.mutations, counter.rows, counter.cells, counter.otherMutations, skipped, counter.errors,
                              seconds, cpuSeconds, counter.mutations / seconds, fileBytes / seconds / 1e6,
                              counter.mutations / cpuSeconds, fileBytes / cpuSeconds / 1e6);
        }
        System.exit(0);
    }
}
